"""Layers walked in place: files hashed by workers from the blob, which must not change meanwhile.

The OCI rules hold for placed layers as for streamed ones (tests/unit/test_oci_layers.py
runs every case both ways); here is what only the placed walk has.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import tarfile
from pathlib import Path

import psutil
import pytest

from agent.image.oci.blobs import Region, SourceError
from agent.image.oci.layers import ImageTree
from agent.image.oci.placed import PlacedLayer
from agent.manifest.policy import Policy
from tests.fixtures.layer_tars import KEY, OFFSET, M, layer, placed

EVERYTHING = Policy(exclude=())


def test_placed_layers_hash_every_file_in_batches_and_links_wait_for_their_target(
    tmp_path: Path,
) -> None:
    big = os.urandom(3 << 20)  # a batch of its own, and longer than a worker's read-ahead
    members = [M(f"f{i:04}", data=b"%d" % i * (i % 50)) for i in range(1500)]  # several batches
    members[700:700] = [
        M("big", data=big),
        M("big-link", tarfile.LNKTYPE, link="big"),  # its target's digest is still out
        M("f0003-link", tarfile.LNKTYPE, link="f0003"),
        M("root/.ssh/id_rsa", data=KEY),
        M("empty"),
    ]
    data = layer(*members).getvalue()
    with ImageTree(workers=2) as tree:
        with placed(data, tmp_path) as walked:
            tree.apply(walked, "l")
        entries = {entry.path: entry for entry in tree.entries(EVERYTHING)}
        warnings = tree.warnings(list(entries.values()))
    with ImageTree() as streamed:
        streamed.apply(io.BytesIO(data), "l")
        assert streamed.entries(EVERYTHING) == sorted(entries.values(), key=lambda e: e.path)
    assert entries[b"/big"].sha256 == hashlib.sha256(big).digest()
    assert entries[b"/big-link"].sha256 == entries[b"/big"].sha256
    assert entries[b"/f0003-link"].sha256 == hashlib.sha256(b"333").digest()
    assert entries[b"/empty"].sha256 == hashlib.sha256(b"").digest()
    assert [w.path for w in warnings] == [b"/root/.ssh/id_rsa"]


def test_a_placed_layer_changed_while_it_is_read_fails(tmp_path: Path) -> None:
    data = layer(*(M(f"f{i}", data=b"x" * 5000) for i in range(3000))).getvalue()
    changed = pytest.raises(SourceError, match="changed while it was read")
    with ImageTree() as tree, changed, placed(data, tmp_path) as walked:
        tree.apply(walked, "l")
        with open(walked.region.path, "r+b") as blob:  # same bytes: only its times change
            blob.seek(OFFSET)
            blob.write(data[:512])


def test_a_placed_layer_replaced_under_its_name_fails(tmp_path: Path) -> None:
    data = layer(*(M(f"f{i}", data=b"x" * 5000) for i in range(3000))).getvalue()
    changed = pytest.raises(SourceError, match="changed while it was read")
    with ImageTree() as tree, changed, placed(data, tmp_path) as walked:
        path = Path(walked.region.path)
        copy = path.with_name("copy")
        copy.write_bytes(path.read_bytes())
        os.replace(copy, path)  # the workers open the name: another file now
        tree.apply(walked, "l")


def test_a_hashing_process_that_dies_fails_the_layer(tmp_path: Path) -> None:
    data = layer(*(M(f"f{i}", data=b"x" * 5000) for i in range(3000))).getvalue()
    killed: list[int] = []
    with placed(data, tmp_path) as walked:  # its digest worker starts first
        blob_worker = {child.pid for child in psutil.Process().children()}

        def kill(members: int, hashed: int) -> None:
            workers = {child.pid for child in psutil.Process().children()} - blob_worker
            if workers and not killed:
                killed.append(min(workers))
                os.kill(killed[0], signal.SIGKILL)

        with ImageTree(progress=kill) as tree, pytest.raises(SourceError, match="died"):
            tree.apply(walked, "l")
    assert killed


def test_a_blob_digest_process_that_dies_fails_the_layer(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    with blob.open("wb") as out:
        out.truncate(1 << 30)  # a second or so of hashing: it dies long before the end
    before = {child.pid for child in psutil.Process().children()}
    with PlacedLayer(Region(str(blob), 0, 1 << 30), "blob") as walked:
        [worker] = [child for child in psutil.Process().children() if child.pid not in before]
        worker.kill()
        with pytest.raises(SourceError, match="died"):
            walked.finish()
