"""Layer blob streams: decompressed and digested on threads of their own, never unbounded.

Every stream's threads must be gone once it is closed, whether it was read to
the end, left half read, or broke on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import threading
import zlib

import pytest
import zstandard

from agent.image.oci.streams import CHUNK, LayerStream, Pipe, gunzip, unzstd
from tests.fixtures.trickle import Trickle

PLAIN = os.urandom(3 * CHUNK + 12345)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("layer-")]


def read_through(blob: bytes, compression: str) -> tuple[bytes, LayerStream]:
    stream = LayerStream(io.BytesIO(blob), compression)
    try:
        out = stream.read()
        stream.finish()
    finally:
        stream.close()
    assert layer_threads() == []
    return out, stream


@pytest.mark.parametrize(
    ("compression", "blob"),
    [
        ("none", PLAIN),
        ("gzip", gzip.compress(PLAIN)),
        ("zstd", zstandard.ZstdCompressor().compress(PLAIN)),
        ("detect", gzip.compress(PLAIN)),
        ("detect", zstandard.ZstdCompressor().compress(PLAIN)),
        ("detect", PLAIN),
    ],
)
def test_streams_give_the_tar_and_both_digests(compression: str, blob: bytes) -> None:
    out, stream = read_through(blob, compression)
    assert out == PLAIN
    assert (stream.blob.digest(), stream.blob.count) == (digest(blob), len(blob))
    assert stream.plain.digest() == digest(PLAIN)


def test_gzip_members_follow_one_another_and_zeros_may_pad_the_end() -> None:
    halves = gzip.compress(PLAIN[:1000]) + gzip.compress(PLAIN[1000:])
    assert b"".join(gunzip(io.BytesIO(halves + bytes(3000)))) == PLAIN
    with pytest.raises(zlib.error, match="not a gzip member header"):
        b"".join(gunzip(io.BytesIO(halves + b"garbage after the members")))
    with pytest.raises(EOFError, match="inside a member header"):
        b"".join(gunzip(io.BytesIO(halves + halves[:6])))
    with pytest.raises(EOFError, match="inside a member trailer"):
        b"".join(gunzip(io.BytesIO(halves[:-4])))
    with pytest.raises(EOFError, match="ends early"):
        b"".join(gunzip(io.BytesIO(halves[:-100])))
    with pytest.raises(EOFError, match="empty"):
        b"".join(gunzip(io.BytesIO(b"")))


def test_gzip_headers_with_every_optional_field_are_skipped() -> None:
    deflated = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflated.compress(PLAIN) + deflated.flush()
    flags = 0x02 | 0x04 | 0x08 | 0x10  # header CRC, extra field, name, comment
    header = b"\x1f\x8b\x08" + bytes([flags]) + bytes(6) + b"\x05\x00extra" + b"name\0"
    header += b"a comment\0" + b"\x00\x00"
    member = header + body + struct.pack("<II", zlib.crc32(PLAIN), len(PLAIN) & 0xFFFFFFFF)
    for sizes in (CHUNK, 3):  # the header whole, or cut in every field
        assert b"".join(gunzip(Trickle(member, sizes))) == PLAIN
    assert gzip.decompress(member) == PLAIN  # the hand-made member is valid gzip


def test_zstd_frames_follow_one_another() -> None:
    compressor = zstandard.ZstdCompressor()
    frames = compressor.compress(PLAIN[:1000]) + compressor.compress(PLAIN[1000:])
    assert b"".join(unzstd(io.BytesIO(frames))) == PLAIN


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_decompressed_chunks_stay_bounded_whatever_the_ratio(how: str) -> None:
    zeros = bytes(64 * CHUNK)
    blob = gzip.compress(zeros) if how == "gzip" else zstandard.ZstdCompressor().compress(zeros)
    assert len(blob) < CHUNK
    chunks = list((gunzip if how == "gzip" else unzstd)(io.BytesIO(blob)))
    assert max(len(chunk) for chunk in chunks) <= CHUNK
    assert sum(len(chunk) for chunk in chunks) == len(zeros)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_stream_closed_half_read_stops_its_threads(compression: str) -> None:
    big = PLAIN * 8
    blob = gzip.compress(big, compresslevel=1) if compression == "gzip" else big
    stream = LayerStream(io.BytesIO(blob), compression)
    assert len(stream.read(CHUNK)) > 0  # the stages now wait on full queues
    stream.close()
    stream.close()
    assert layer_threads() == []


class Failing(io.RawIOBase):
    """A file that gives some bytes, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self._given = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._given:
            raise OSError("disk on fire")
        self._given = True
        return PLAIN[:CHUNK]


def test_an_error_on_a_stage_reaches_the_reader() -> None:
    stream = LayerStream(Failing(), "none")
    try:
        assert stream.read(CHUNK) == PLAIN[:CHUNK]
        with pytest.raises(OSError, match="disk on fire"):
            stream.read(CHUNK)
    finally:
        stream.close()
    assert layer_threads() == []
    corrupt = LayerStream(io.BytesIO(b"\x1f\x8b" + os.urandom(5000)), "gzip")
    try:
        with pytest.raises(zlib.error):
            corrupt.read()
    finally:
        corrupt.close()


def test_a_pipe_reads_in_pieces_and_peeks_without_reading() -> None:
    pipe = Pipe(lambda: iter([b"abc", b"defg"]), "layer-test")
    try:
        assert pipe.peek() == b"abc"
        assert pipe.read(2) == b"ab"
        assert pipe.read(5) == b"c"
        assert pipe.read() == b"defg"
        assert pipe.read(1) == b""
    finally:
        pipe.close()
    assert layer_threads() == []
