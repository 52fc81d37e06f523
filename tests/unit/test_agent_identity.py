"""Instance id, boot id and image identity, read from fixture trees."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.daemon.identity import (
    IdentityError,
    check_manifest_digest,
    read_boot_id,
    read_image_json,
    resolve_instance_id,
)

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def machine(root: Path, content: str | None) -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if content is not None:
        (root / "etc" / "machine-id").write_text(content)
    return root


def test_a_configured_id_wins(tmp_path: Path) -> None:
    root = machine(tmp_path, MACHINE_ID)
    assert resolve_instance_id("i-0abc", root=str(root), host_root=str(root)) == "i-0abc"


@pytest.mark.parametrize("bad", [" i-1", "a b", "x" * 129, "-lead", "é", "a/b"])
def test_a_malformed_configured_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(IdentityError, match="not valid"):
        resolve_instance_id(bad, root=str(tmp_path))


def test_the_host_uses_its_machine_id(tmp_path: Path) -> None:
    host = machine(tmp_path / "host", MACHINE_ID + "\n")
    assert resolve_instance_id(None, root=str(host), host_root=str(host)) == MACHINE_ID


def test_another_root_uses_its_own_machine_id(tmp_path: Path) -> None:
    host = machine(tmp_path / "host", "f" * 32)
    container = machine(tmp_path / "container", MACHINE_ID)
    assert resolve_instance_id(None, root=str(container), host_root=str(host)) == MACHINE_ID


def test_another_root_without_machine_id_is_refused_not_given_the_hosts(tmp_path: Path) -> None:
    host = machine(tmp_path / "host", "f" * 32)
    container = machine(tmp_path / "container", None)
    with pytest.raises(IdentityError, match="shared by every root"):
        resolve_instance_id(None, root=str(container), host_root=str(host))


@pytest.mark.parametrize("content", ["", "uninitialized\n"])
def test_an_empty_host_machine_id_asks_for_an_instance_id(tmp_path: Path, content: str) -> None:
    host = machine(tmp_path, content)
    with pytest.raises(IdentityError, match="--instance-id"):
        resolve_instance_id(None, root=str(host), host_root=str(host))


def test_a_garbled_machine_id_is_refused(tmp_path: Path) -> None:
    host = machine(tmp_path, "not-an-id")
    with pytest.raises(IdentityError, match="32 hex digits"):
        resolve_instance_id(None, root=str(host), host_root=str(host))


def test_boot_id_comes_from_proc(tmp_path: Path) -> None:
    path = tmp_path / "sys" / "kernel" / "random"
    path.mkdir(parents=True)
    (path / "boot_id").write_text("8a7c0f64-3d2e-4a53-9e0b-1f2a3b4c5d6e\n")
    assert read_boot_id(str(tmp_path)) == "8a7c0f64-3d2e-4a53-9e0b-1f2a3b4c5d6e"
    with pytest.raises(IdentityError, match="boot id"):
        read_boot_id(str(tmp_path / "nowhere"))


def test_the_real_boot_id_is_readable() -> None:
    assert len(read_boot_id()) == 36


def image(**overrides: object) -> dict[str, object]:
    digest = "sha256:" + "b" * 64
    data: dict[str, object] = {
        "name": "web",
        "version": "1.2.0",
        "image_ref": f"registry.example.com/web@{digest}",
        "image_digest": digest,
        "manifest_digest": digest,
        "root": "ab" * 32,
        "entry_count": 3,
        "byte_count": 10,
        "policy": {"include": ["/"], "exclude": ["/tmp"], "ignore_attributes": []},
    }
    data.update(overrides)
    return data


def test_image_json_gives_ref_digest_root_and_policy(tmp_path: Path) -> None:
    path = tmp_path / "image.json"
    path.write_text(json.dumps(image()))
    identity = read_image_json(str(path))
    assert identity.image_ref.startswith("registry.example.com/web@sha256:")
    assert identity.root == bytes.fromhex("ab" * 32)
    assert identity.policy.excludes(b"/tmp/x") and not identity.policy.excludes(b"/etc")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"root": "abc"}, "root must be 64 hex"),
        ({"manifest_digest": "md5:00"}, "not sha256"),
        ({"image_ref": ""}, "'image_ref' must be a non-empty string"),
        ({"policy": {"exclude": ["relative"]}}, "must be absolute"),
    ],
)
def test_a_bad_image_json_says_what_is_wrong(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    path = tmp_path / "image.json"
    path.write_text(json.dumps(image(**overrides)))
    with pytest.raises(IdentityError, match=message):
        read_image_json(str(path))


def test_missing_keys_and_bad_json_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.json"
    data = image()
    del data["image_digest"]
    path.write_text(json.dumps(data))
    with pytest.raises(IdentityError, match="no 'image_digest'"):
        read_image_json(str(path))
    path.write_text("{")
    with pytest.raises(IdentityError, match="not valid JSON"):
        read_image_json(str(path))


def test_the_manifest_must_be_the_one_image_json_names(tmp_path: Path) -> None:
    path = tmp_path / "manifest.pb"
    path.write_bytes(b"manifest bytes")
    good = "sha256:" + hashlib.sha256(b"manifest bytes").hexdigest()
    check_manifest_digest(str(path), good)
    with pytest.raises(IdentityError, match="different bakes"):
        check_manifest_digest(str(path), "sha256:" + "0" * 64)
