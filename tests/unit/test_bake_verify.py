"""bake + verify on real trees: deterministic output and every change named exactly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.image.bake import BakeError, bake, default_name
from agent.image.verify import VerifyError, verify
from agent.manifest.diff import ChangeKind
from agent.manifest.format import EntryType, read_manifest
from agent.manifest.policy import Policy

Tree = dict[bytes, bytes | None]  # relative path -> content, None for a directory


def _build(root: Path, tree: Tree, *, reverse: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel in sorted(tree, reverse=reverse):
        path = os.path.join(os.fsencode(root), rel)
        content = tree[rel]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if content is None:
            os.makedirs(path, exist_ok=True)
        else:
            with open(path, "wb") as handle:
                handle.write(content)
            os.chmod(path, 0o644)
    for dirpath, _dirs, _files in os.walk(os.fsencode(root)):
        os.chmod(dirpath, 0o755)


names = st.sampled_from([b"a", b"b", b"etc", b"caf\xe9", "é".encode(), b"x y", b"%", b"\xff"])
rel_paths = st.lists(names, min_size=1, max_size=3).map(b"/".join)
trees = st.dictionaries(rel_paths, st.one_of(st.none(), st.binary(max_size=64)), max_size=8).filter(
    lambda tree: (
        not any(  # a file cannot also be a directory
            other.startswith(rel + b"/")
            for rel, content in tree.items()
            if content
            for other in tree
        )
        and not any(
            other.startswith(rel + b"/")
            for rel, content in tree.items()
            if content == b""
            for other in tree
        )
    )
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(trees)
def test_bake_is_deterministic(tree: Tree) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _build(base / "one", tree)
        _build(base / "two", tree, reverse=True)  # other creation order, inodes, times
        first = bake(str(base / "one"), str(base / "out1"), policy=Policy(), name="t")
        again = bake(str(base / "one"), str(base / "out2"), policy=Policy(), name="t")
        other = bake(str(base / "two"), str(base / "out3"), policy=Policy(), name="t")
        outputs = [
            ((base / out / "manifest.pb").read_bytes(), (base / out / "image.json").read_bytes())
            for out in ("out1", "out2", "out3")
        ]
        assert outputs[0] == outputs[1] == outputs[2]
        assert first.manifest_digest == again.manifest_digest == other.manifest_digest
        result = verify(str(base / "two"), first.manifest)
        assert result.conformant and result.changes == ()


def test_image_json_content(tmp_path: Path) -> None:
    _build(tmp_path / "root", {b"etc/hostname": b"web\n", b"empty": b"", b"usr/bin": None})
    result = bake(
        str(tmp_path / "root"), str(tmp_path / "out"), policy=Policy(), name="web", version="1.2"
    )
    image = json.loads((tmp_path / "out" / "image.json").read_text())
    manifest, digest = read_manifest(str(tmp_path / "out" / "manifest.pb"))
    assert image == result.image
    assert image == {
        "name": "web",
        "version": "1.2",
        "image_ref": f"web@{digest}",
        "image_digest": digest,
        "manifest_digest": digest,
        "root": manifest.root.hex(),
        "entry_count": 6,  # /, /empty, /etc, /etc/hostname, /usr, /usr/bin
        "byte_count": 4,
        "policy": Policy().to_json(),
        "format_version": 1,
        "secrets_warnings": 0,
    }
    empty = next(e for e in manifest.entries if e.path == b"/empty")
    assert empty.type is EntryType.REGULAR and empty.size == 0 and len(empty.sha256) == 32
    assert sorted(os.listdir(tmp_path / "out")) == ["image.json", "manifest.pb"]  # no temp files


def test_output_dir_inside_root_is_excluded(tmp_path: Path) -> None:
    _build(tmp_path, {b"etc/hostname": b"web\n"})
    first = bake(str(tmp_path), str(tmp_path / "etc" / "corral"), policy=Policy(), name="web")
    assert first.manifest.policy.exclude[-1] == "/etc/corral"
    second = bake(str(tmp_path), str(tmp_path / "etc" / "corral"), policy=Policy(), name="web")
    assert second.manifest_digest == first.manifest_digest
    assert verify(str(tmp_path), second.manifest).conformant


@pytest.mark.parametrize(
    ("name", "version"), [("Web", "1"), ("web app", "1"), ("web", ""), ("web", "-1"), ("", "1")]
)
def test_invalid_identity_is_refused(tmp_path: Path, name: str, version: str) -> None:
    with pytest.raises(BakeError):
        bake(str(tmp_path), str(tmp_path / "out"), policy=Policy(), name=name, version=version)


def test_default_name(tmp_path: Path) -> None:
    assert default_name(str(tmp_path / "My Image_1")) == "my-image-1"
    assert default_name("/") == "root"


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(BakeError, match="not a directory"):
        bake(str(tmp_path / "absent"), str(tmp_path / "out"), policy=Policy(), name="x")
    with pytest.raises(VerifyError, match="not a directory"):
        verify(
            str(tmp_path / "absent"),
            bake(str(tmp_path), str(tmp_path / "o"), policy=Policy()).manifest,
        )


# --- every change kind, named exactly -------------------------------------------------

BASE: Tree = {
    b"etc/app.conf": b"hello",
    b"etc/other.conf": b"other",
    b"usr/bin": None,
    b"var/log": None,
}


def _symlink(root: Path) -> None:
    os.symlink("app.conf", root / "etc" / "link")


def _tamper_type_dir(root: Path) -> None:
    (root / "etc" / "app.conf").unlink()
    (root / "etc" / "app.conf").mkdir()
    os.chmod(root / "etc" / "app.conf", 0o644)


def _tamper_type_symlink(root: Path) -> None:
    (root / "etc" / "app.conf").unlink()
    os.symlink("other.conf", root / "etc" / "app.conf")


Tamper = Callable[[Path], object]  # what it returns is not used
CASES: list[tuple[str, Tamper, list[tuple[str, str, list[str]]]]] = [
    (
        "content",
        lambda r: (r / "etc/app.conf").write_bytes(b"HELLO"),
        [("modified", "/etc/app.conf", ["content"])],
    ),
    (
        "content+size",
        lambda r: (r / "etc/app.conf").write_bytes(b"hello, world"),
        [("modified", "/etc/app.conf", ["size", "content"])],
    ),
    ("add", lambda r: (r / "etc/new").write_bytes(b""), [("added", "/etc/new", [])]),
    ("remove", lambda r: (r / "etc/app.conf").unlink(), [("removed", "/etc/app.conf", [])]),
    (
        "mode",
        lambda r: os.chmod(r / "etc/app.conf", 0o600),
        [("modified", "/etc/app.conf", ["mode"])],
    ),
    (
        "setuid",
        lambda r: os.chmod(r / "usr/bin", 0o4755),
        [("modified", "/usr/bin", ["mode"])],
    ),
    (
        "uid",
        lambda r: os.chown(r / "etc/app.conf", 1234, -1),
        [("modified", "/etc/app.conf", ["uid"])],
    ),
    (
        "gid",
        lambda r: os.chown(r / "etc/app.conf", -1, 4321),
        [("modified", "/etc/app.conf", ["gid"])],
    ),
    ("file->dir", _tamper_type_dir, [("modified", "/etc/app.conf", ["type"])]),
    ("file->symlink", _tamper_type_symlink, [("modified", "/etc/app.conf", ["type", "mode"])]),
    ("mutable path", lambda r: (r / "var/log/syslog").write_bytes(b"x"), []),
]


@pytest.mark.parametrize(("tamper", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_change_is_named_exactly(
    tmp_path: Path, tamper: Tamper, expected: list[tuple[str, str, list[str]]]
) -> None:
    root = tmp_path / "root"
    _build(root, BASE)
    policy = Policy(exclude=("/var/log",))
    baked = bake(str(root), str(tmp_path / "out"), policy=policy, name="t")
    tamper(root)
    result = verify(str(root), baked.manifest)
    named = [(c.kind.value, os.fsdecode(c.path), list(c.attributes)) for c in result.changes]
    assert named == expected
    assert result.conformant is (not expected)


def test_symlink_target_change(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _build(root, BASE)
    _symlink(root)
    baked = bake(str(root), str(tmp_path / "out"), policy=Policy(), name="t")
    (root / "etc" / "link").unlink()
    os.symlink("other.conf", root / "etc" / "link")
    result = verify(str(root), baked.manifest)
    assert [(c.kind, c.path, c.attributes) for c in result.changes] == [
        (ChangeKind.MODIFIED, b"/etc/link", ("target",))
    ]


def test_fifos_sockets_and_device_nodes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _build(root, {b"dev2": None, b"etc/app.conf": b"x"})
    os.mkfifo(root / "fifo")
    os.mknod(root / "dev2" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(root / "dev2" / "null", 0o666)
    os.mknod(root / "dev2" / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(root / "sock"))
        baked = bake(str(root), str(tmp_path / "out"), policy=Policy(), name="t")
        kinds = {e.path: e.type for e in baked.manifest.entries}
        assert kinds[b"/fifo"] is EntryType.FIFO
        assert kinds[b"/sock"] is EntryType.SOCKET
        assert kinds[b"/dev2/null"] is EntryType.CHAR_DEVICE
        assert kinds[b"/dev2/loop0"] is EntryType.BLOCK_DEVICE
        null = next(e for e in baked.manifest.entries if e.path == b"/dev2/null")
        assert (null.rdev_major, null.rdev_minor) == (1, 3)
        assert verify(str(root), baked.manifest).conformant
        os.unlink(root / "dev2" / "null")
        os.mknod(root / "dev2" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        os.chmod(root / "dev2" / "null", 0o666)
        result = verify(str(root), baked.manifest)
        assert [(c.path, c.attributes) for c in result.changes] == [(b"/dev2/null", ("device",))]
    finally:
        server.close()


def test_hard_links_are_recorded_under_every_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _build(root, {b"a": b"shared"})
    os.link(root / "a", root / "b")
    baked = bake(str(root), str(tmp_path / "out"), policy=Policy(), name="t")
    a, b = (e for e in baked.manifest.entries if e.path in (b"/a", b"/b"))
    assert a._replace(path=b"/b") == b
    (root / "a").write_bytes(b"SHARED")  # both names see the new content
    result = verify(str(root), baked.manifest)
    assert [(c.path, c.attributes) for c in result.changes] == [
        (b"/a", ("content",)),
        (b"/b", ("content",)),
    ]


def test_non_utf8_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _build(root, {b"caf\xe9/\xff\xfe": b"latin-1 dir", "é".encode(): b"utf-8", b"a%b": b"%"})
    baked = bake(str(root), str(tmp_path / "out"), policy=Policy(), name="t")
    paths = [e.path for e in baked.manifest.entries]
    assert b"/caf\xe9/\xff\xfe" in paths
    assert verify(str(root), baked.manifest).conformant
    with open(os.path.join(os.fsencode(root), b"caf\xe9/\xff\xfe"), "wb") as handle:
        handle.write(b"changed")
    result = verify(str(root), baked.manifest)
    assert [c.path for c in result.changes] == [b"/caf\xe9/\xff\xfe"]


def test_verify_uses_the_baked_policy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _build(root, {b"etc/app.conf": b"x", b"srv/data": None})
    policy = Policy(exclude=("/srv/data",), ignore_attributes=("mode",))
    baked = bake(str(root), str(tmp_path / "out"), policy=policy, name="t")
    manifest, _ = read_manifest(baked.manifest_path)
    assert manifest.policy == policy
    (root / "srv" / "data" / "upload").write_bytes(b"user data")
    os.chmod(root / "etc" / "app.conf", 0o600)
    assert verify(str(root), manifest).conformant
    shutil.rmtree(root / "srv")
    result = verify(str(root), manifest)
    assert [(c.kind, c.path) for c in result.changes] == [(ChangeKind.REMOVED, b"/srv")]
    assert result.counts() == {
        "added": 0,
        "removed": 1,
        "modified": 0,
        "entries": 3,
        "expected_entries": 4,
        "scan_errors": 0,
    }
