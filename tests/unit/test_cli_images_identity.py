"""``corral image register`` refuses an image.json whose reference and digests disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.cli.client import ClientError
from controller.cli.image_registry import _read_bake

OCI = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def write(directory: Path, **changes: Any) -> Path:
    document = {
        "name": "localhost/app",
        "version": "1",
        "image_ref": f"localhost/app@{OCI}",
        "image_digest": OCI,
        "oci_manifest_digest": OCI,
        "config_digest": OTHER,
        "manifest_digest": "sha256:" + "c" * 64,
        "root": "00" * 32,
        "entry_count": 1,
        "byte_count": 0,
    }
    document.update(changes)
    (directory / "image.json").write_text(json.dumps(document))
    (directory / "manifest.pb").write_bytes(b"x")
    return directory


def test_an_oci_bake_registers_under_its_oci_manifest_digest(tmp_path: Path) -> None:
    image, _ = _read_bake(write(tmp_path))
    assert (image.ref, image.digest) == (f"localhost/app@{OCI}", OCI)


@pytest.mark.parametrize(
    "changes",
    [
        {"image_digest": OTHER},
        {"image_ref": f"localhost/app@{OTHER}", "image_digest": OTHER},
        {"image_ref": "localhost/app:1"},
    ],
)
def test_disagreeing_digests_are_refused(tmp_path: Path, changes: dict[str, Any]) -> None:
    with pytest.raises(ClientError, match="disagree"):
        _read_bake(write(tmp_path, **changes))


def test_a_directory_bake_has_no_oci_digest(tmp_path: Path) -> None:
    image, _ = _read_bake(write(tmp_path, oci_manifest_digest=None))
    assert image.digest == OCI
