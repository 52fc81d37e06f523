"""The tar writer: stream bytes, stream digest and per-file digests, whatever the buffering."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from agent.image import tarwriter
from agent.image.tarstream import REGULAR, simple_header
from agent.image.tarwriter import TarWriter

SIZES = [0, 1, 511, 512, 513, 2047, 3000, 4096, 9000, 70_000]


def _header(name: str, size: int) -> bytes:
    header = simple_header(name.encode(), REGULAR, mode=0o644, uid=0, gid=0, size=size)
    assert header is not None
    return header


def _write(tmp_path: Path, contents: list[bytes], **options: int) -> tuple[bytes, str, list[bytes]]:
    """Archive ``contents`` as files f0, f1, ...; returns the stream, its digest, the digests."""
    out = os.open(tmp_path / "out.tar", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    writer = TarWriter(out, **options)
    try:
        indexes = []
        for number, data in enumerate(contents):
            source = tmp_path / f"src{number}"
            source.write_bytes(data)
            fd = os.open(source, os.O_RDONLY)
            try:
                index = writer.add_file(_header(f"f{number}", len(data)), fd, len(data))
            finally:
                os.close(fd)
            assert index is not None
            indexes.append(index)
        writer.finish()
        digest = writer.close()
    finally:
        writer.close()
        os.close(out)
    return (tmp_path / "out.tar").read_bytes(), digest, [writer.digests[i] for i in indexes]


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None, f"{member.name} is not a regular file"
    return handle.read()


@pytest.mark.parametrize(("buffer_bytes", "offload"), [(1 << 20, 1 << 30), (4096, 0), (8192, 2048)])
def test_stream_and_digests_do_not_depend_on_buffering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer_bytes: int, offload: int
) -> None:
    monkeypatch.setattr(tarwriter, "OFFLOAD_BYTES", offload)
    contents = [os.urandom(size) for size in SIZES]
    stream, digest, digests = _write(tmp_path, contents, buffer_bytes=buffer_bytes)
    assert digest == hashlib.sha256(stream).hexdigest()
    assert digests == [hashlib.sha256(data).digest() for data in contents]
    assert len(stream) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        read = [_member_bytes(archive, member) for member in archive.getmembers()]
    assert read == contents
    reference, _, _ = _write(tmp_path, contents)
    assert stream == reference


@pytest.mark.parametrize("size", [100, 5000, 20_000])
@pytest.mark.parametrize("change", [-1, +1])
def test_a_file_whose_size_changed_is_refused(tmp_path: Path, size: int, change: int) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"x" * (size + change))
    out = os.open(tmp_path / "out.tar", os.O_WRONLY | os.O_CREAT)
    writer = TarWriter(out, buffer_bytes=8192)
    fd = os.open(source, os.O_RDONLY)
    try:
        assert writer.add_file(_header("f", size), fd, size) is None
    finally:
        os.close(fd)
        writer.close()
        os.close(out)


def test_a_write_error_is_raised(tmp_path: Path) -> None:
    (tmp_path / "ro").write_bytes(b"")
    read_only = os.open(tmp_path / "ro", os.O_RDONLY)
    writer = TarWriter(read_only, buffer_bytes=4096)
    try:
        with pytest.raises(OSError):
            for _ in range(64):
                writer.write(bytes(512))
            writer.close()
    finally:
        os.close(read_only)
    with pytest.raises(OSError):
        writer.close()  # still reported, and the worker is gone
