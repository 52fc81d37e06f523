"""A layer blob read as its uncompressed tar stream, its digests computed on the way.

Baking an image walks each layer's tar on one thread; everything else about
the stream runs beside that thread, on other cores (file reads, :mod:`hashlib`,
:mod:`zlib` and zstandard all release the GIL while they work on a buffer).
A :class:`LayerStream` is a chain of :class:`Pipe` stages, each a thread:

1. read the blob in chunks of :data:`CHUNK` bytes, digesting and counting them;
2. for a gzip or zstd blob, decompress those chunks into chunks of at most
   :data:`CHUNK` bytes (memory stays bounded whatever the compression
   ratio);
3. and digest those (the ``diff_id``).

Decompression is the slowest stage (zlib inflates some 300 MB/s), so it has a
thread to itself.

At most :data:`_QUEUED` chunks wait between two threads.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Protocol, cast

import zstandard

CHUNK = 1 << 20
"""Bytes handed from one thread to the next at a time."""
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_QUEUED = 8
MAX_GZIP_HEADER = 1 << 20
"""Longest gzip member header (with its name, comment and extra field) accepted."""
_GZIP_FIXED = struct.Struct("<2sBBIBB")  # magic, method, flags, mtime, extra flags, OS
_GZIP_TRAILER = 8
_DEFLATE = 8
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT, _RESERVED = 0x02, 0x04, 0x08, 0x10, 0xE0


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Tally:
    """The SHA-256 digest and length of the bytes counted so far."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, data: bytes) -> None:
        self._hash.update(data)
        self.count += len(data)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class Pipe:
    """The chunks ``produce`` yields on a thread of its own, read here in order.

    An error on that thread is raised by the :meth:`read` that reaches it.
    """

    def __init__(self, produce: Callable[[], Iterator[bytes]], name: str) -> None:
        self._chunks: queue.Queue[bytes | Exception | None] = queue.Queue(maxsize=_QUEUED)
        self._stop = threading.Event()
        self._buffer = b""
        self._ended = False
        self._thread = threading.Thread(target=self._work, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _work(self, produce: Callable[[], Iterator[bytes]]) -> None:
        try:
            for chunk in produce():
                if self._stop.is_set():
                    return
                self._chunks.put(chunk)
        except Exception as exc:  # handed to the reading thread
            self._chunks.put(exc)
        finally:
            self._chunks.put(None)

    def peek(self) -> bytes:
        """The bytes the next :meth:`read` returns (empty at the end), without reading them."""
        if not self._buffer and not self._ended:
            item = self._chunks.get()
            if isinstance(item, Exception):
                self._ended = True
                raise item
            if item is None:
                self._ended = True
            else:
                self._buffer = item
        return self._buffer

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (at most one chunk); everything left when ``size`` < 0."""
        if size < 0:
            parts = []
            while part := self.read(CHUNK):
                parts.append(part)
            return b"".join(parts)
        data = self.peek()
        if len(data) <= size:
            self._buffer = b""
            return data
        self._buffer = data[size:]
        return data[:size]

    def drain(self) -> None:
        """Read to the end."""
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        """Stop the thread, reading nothing more (idempotent)."""
        self._stop.set()
        while not self._ended:  # frees the thread from a full queue until it says it is done
            if self._chunks.get() is None:
                self._ended = True
        self._thread.join()


def read_counted(source: Readable, tally: Tally) -> Iterator[bytes]:
    """``source`` in chunks, each added to ``tally``."""
    while chunk := source.read(CHUNK):
        tally.add(chunk)
        yield chunk


def _gzip_header_length(data: bytes) -> int | None:
    """The length of the gzip member header ``data`` starts with; None while it is cut short."""
    if len(data) < _GZIP_FIXED.size:
        return None
    magic, method, flags, _mtime, _extra_flags, _os = _GZIP_FIXED.unpack_from(data)
    if magic != GZIP_MAGIC or method != _DEFLATE or flags & _RESERVED:
        raise zlib.error("not a gzip member header")
    end = _GZIP_FIXED.size
    if flags & _FEXTRA:
        if len(data) < end + 2:
            return None
        end += 2 + int.from_bytes(data[end : end + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            stop = data.find(b"\0", end)
            if stop < 0:
                return None
            end = stop + 1
    if flags & _FHCRC:
        end += 2
    return end if len(data) >= end else None


def _more(source: Readable, data: bytes, what: str) -> bytes:
    """``data`` and the next chunk of ``source``; EOFError naming ``what`` at the end."""
    more = source.read(CHUNK)
    if not more:
        raise EOFError(f"gzip stream ends inside {what}")
    if len(data) > MAX_GZIP_HEADER:
        raise zlib.error(f"gzip member header of more than {MAX_GZIP_HEADER} bytes")
    return data + more


def gunzip(source: Readable) -> Iterator[bytes]:
    """The gzip stream read from ``source``, decompressed: one member after another.

    Headers and trailers are read here and the deflate data inflated raw:
    zlib would also compute each member's CRC-32, a tenth of the time, which
    the ``diff_id`` check (SHA-256 of the same output) makes redundant. Zero
    bytes may pad the end (as :mod:`gzip` allows); anything else after a
    member must be another member. Raises zlib.error or EOFError when the
    stream is corrupt or ends early.
    """
    data = source.read(CHUNK)
    if not data:
        raise EOFError("empty gzip stream")
    while True:
        while (start := _gzip_header_length(data)) is None:
            data = _more(source, data, "a member header")
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        data = data[start:]
        while not inflater.eof:
            if not data:
                data = source.read(CHUNK)
                if not data:
                    if tail := inflater.flush():
                        yield tail
                    if not inflater.eof:
                        raise EOFError("gzip stream ends early")
                    break
            out = inflater.decompress(data, CHUNK)
            data = inflater.unconsumed_tail
            if out:
                yield out
        data = inflater.unused_data
        while len(data) < _GZIP_TRAILER:  # CRC-32 and length, checked by the diff_id instead
            data = _more(source, data, "a member trailer")
        data = data[_GZIP_TRAILER:].lstrip(b"\0")
        while not data:
            more = source.read(CHUNK)
            if not more:
                return
            data = more.lstrip(b"\0")


def unzstd(source: Readable) -> Iterator[bytes]:
    """The zstd stream read from ``source``, decompressed, frame after frame."""
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], source), read_size=CHUNK, read_across_frames=True
    )
    while out := reader.read(CHUNK):
        yield out


def _decompressed(
    source: Pipe, decompress: Callable[[Readable], Iterator[bytes]]
) -> Iterator[bytes]:
    yield from decompress(source)
    source.drain()  # what follows the compressed stream still counts in the blob's digest


def compression_detected(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none``, from a blob's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "zstd" if head.startswith(ZSTD_MAGIC) else "none"


class LayerStream:
    """A layer blob's uncompressed tar (:meth:`read`) and, once finished, its digests.

    ``compression`` is ``none``, ``gzip``, ``zstd`` or ``detect`` (from the
    first bytes). :attr:`blob` tallies the blob as stored, :attr:`plain` the
    uncompressed tar (the same tally when the blob is not compressed); both
    are final once :meth:`close` returns.
    """

    def __init__(self, blob: Readable, compression: str) -> None:
        self.blob = Tally()
        self._pipes = [Pipe(lambda: read_counted(blob, self.blob), "layer-read")]
        if compression == "detect":
            compression = compression_detected(self._pipes[0].peek())
        self.plain = self.blob
        if compression != "none":
            self.plain = Tally()
            raw = self._pipes[0]
            decompress = gunzip if compression == "gzip" else unzstd
            inflated = Pipe(lambda: _decompressed(raw, decompress), "layer-decompress")
            self._pipes.append(inflated)
            self._pipes.append(Pipe(lambda: read_counted(inflated, self.plain), "layer-digest"))
        self._out = self._pipes[-1]

    def read(self, size: int = -1, /) -> bytes:
        return self._out.read(size)

    def finish(self) -> None:
        """Read what is left, so the digests cover the whole blob."""
        self._out.drain()

    def close(self) -> None:
        """Stop every thread, the last stage first (idempotent)."""
        for pipe in reversed(self._pipes):
            pipe.close()
