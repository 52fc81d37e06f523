"""Assemble a tar stream in reused buffers and hash it while it is written.

An image build reads every file once and must produce two SHA-256 digests
from those bytes: one per file for the manifest, and one of the whole tarball
(the image digest). :class:`TarWriter` makes that cheap:

- members are assembled in a few reused buffers (1 MiB by default, small enough
  to stay in the CPU cache): a file's content is read straight into the buffer
  behind its header, so no per-file ``bytes`` object is allocated and nothing
  is copied or joined afterwards;
- each full buffer goes to a worker thread that hashes the larger files in it,
  adds it to the stream digest and writes it out. Those calls release the GIL,
  so the worker runs on the other core while the caller reads and lays out the
  next files; it needs the GIL once per buffer and per large file. Small files
  (most of a root, but a minority of its bytes) are hashed by the caller right
  after the read, while they are still in the cache, as handing each to the
  worker would cost more than hashing it.

The writer knows nothing of trees or policies: the caller supplies header
blocks (from :mod:`agent.image.tarstream`) and open file descriptors.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

from agent.image.tarstream import BLOCK, RECORD

BUFFER_BYTES = 1 << 20
BUFFERS = 4
OFFLOAD_BYTES = 16 << 10
"""Files from this size up are hashed by the worker thread."""
_ZEROS = bytes(BLOCK)

_Span = tuple[int, int, "hashlib._Hash | None", int]
"""Content for the worker to hash: (start, stop) in a buffer, the digest it continues (None:
a whole file) and the index in ``digests`` to fill (-1: more pieces follow)."""
_Job = tuple[memoryview, int, list[_Span]] | None
"""A full buffer, how many of its bytes are used and its spans; None stops the worker."""


class TarWriter:
    """Writes a tar stream to ``fd`` and returns its SHA-256 from :meth:`close`.

    Call :meth:`write` for header blocks, :meth:`add_file` for a regular file's
    content, :meth:`finish` once for the end-of-archive marker, then
    :meth:`close` on every path (it stops the worker thread); after it,
    :attr:`digests` holds each added file's SHA-256, in the order added. An
    ``OSError`` (or any error) the worker meets is raised by the next call that
    waits for a buffer, or by :meth:`close`.
    """

    def __init__(self, fd: int, *, buffer_bytes: int = BUFFER_BYTES, buffers: int = BUFFERS):
        if buffer_bytes < 4 * BLOCK or buffers < 2:
            raise ValueError("a tar writer needs at least two buffers of four blocks")
        self._fd = fd
        self._capacity = buffer_bytes
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(buffers - 1):
            self._free.put(memoryview(bytearray(buffer_bytes)))
        self._buffer = memoryview(bytearray(buffer_bytes))
        self._used = 0
        self._spans: list[_Span] = []
        self._flushed = 0
        self.digests: list[bytes] = []
        self._digest = hashlib.sha256()
        self._error: Exception | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._drain, name="tar-writer", daemon=True)
        self._worker.start()

    @property
    def offset(self) -> int:
        """Bytes of stream produced so far."""
        return self._flushed + self._used

    def _drain(self) -> None:
        update = self._digest.update
        digests = self.digests
        sha256 = hashlib.sha256
        while (job := self._jobs.get()) is not None:
            buffer, used, spans = job
            try:
                if self._error is None:
                    for start, stop, running, index in spans:
                        if running is None:
                            digests[index] = sha256(buffer[start:stop]).digest()
                        else:
                            running.update(buffer[start:stop])
                            if index >= 0:
                                digests[index] = running.digest()
                    view = buffer[:used]
                    update(view)
                    while view:
                        view = view[os.write(self._fd, view) :]
            except Exception as exc:  # handed to the caller, which raises it
                self._error = exc
            finally:
                self._free.put(buffer)  # the caller may be waiting for one

    def _flush(self) -> None:
        """Hand the current buffer to the worker and take a free one."""
        if self._error is not None:
            raise self._error
        if self._used:
            self._jobs.put((self._buffer, self._used, self._spans))
            self._flushed += self._used
            self._buffer = self._free.get()
            self._used = 0
            self._spans = []

    def write(self, data: bytes) -> None:
        """Append ``data`` (headers, padding) to the stream."""
        view = memoryview(data)
        while view:
            if self._used == self._capacity:
                self._flush()
            room = min(len(view), self._capacity - self._used)
            self._buffer[self._used : self._used + room] = view[:room]
            self._used += room
            view = view[room:]

    def add_file(self, header: bytes, fd: int, size: int) -> int | None:
        """Append ``header`` and the ``size`` bytes read from ``fd``, padded to a block.

        Returns the index of the content's digest in :attr:`digests` (final once
        :meth:`close` returned), or None when ``fd`` did not hold exactly
        ``size`` bytes (the file changed since it was examined); the stream is
        then unusable. Raises OSError when ``fd`` cannot be read.
        """
        pad = -size % BLOCK
        # One byte more than the file is read: a full read means it grew.
        need = len(header) + max(size + 1, size + pad)
        if need > self._capacity:
            return self._add_large(header, fd, size)
        if self._used + need > self._capacity:
            self._flush()
        buffer = self._buffer
        start = self._used + len(header)
        stop = start + size
        buffer[self._used : start] = header
        count = os.readv(fd, (buffer[start : stop + 1],))
        if count != size and self._read_rest(fd, buffer[start : stop + 1], count) != size:
            return None
        index = len(self.digests)
        if size < OFFLOAD_BYTES:  # read at call time (tests and benchmarks tune it)
            self.digests.append(hashlib.sha256(buffer[start:stop]).digest())
        else:
            self.digests.append(b"")
            self._spans.append((start, stop, None, index))
        buffer[stop : stop + pad] = _ZEROS[:pad]
        self._used = stop + pad
        return index

    @staticmethod
    def _read_rest(fd: int, view: memoryview, count: int) -> int:
        """Keep reading after a short read; returns how many bytes ``view`` received."""
        while count < len(view):
            more = os.readv(fd, (view[count:],))
            if not more:
                break
            count += more
        return count

    def _add_large(self, header: bytes, fd: int, size: int) -> int | None:
        """A file larger than a buffer: its content spans several, hashed piece by piece."""
        self.write(header)
        running = hashlib.sha256()
        index = len(self.digests)
        self.digests.append(b"")
        remaining = size
        while remaining:
            if self._used == self._capacity:
                self._flush()
            start = self._used
            room = min(remaining, self._capacity - start)
            count = os.readv(fd, (self._buffer[start : start + room],))
            if not count:
                return None  # shrank
            self._used += count
            remaining -= count
            self._spans.append((start, self._used, running, -1 if remaining else index))
        if os.read(fd, 1):
            return None  # grew
        self.write(_ZEROS[: -size % BLOCK])
        return index

    def finish(self) -> None:
        """The end-of-archive marker, padded to a whole record like tar(1)."""
        self.write(bytes(2 * BLOCK))
        self.write(bytes(-self.offset % RECORD))

    def close(self) -> str:
        """Write what is pending, stop the worker and return the stream's hex SHA-256.

        Raises the OSError the worker met while writing, if any. Safe to call twice.
        """
        if self._worker.is_alive():
            try:
                if self._error is None and self._used:
                    self._jobs.put((self._buffer, self._used, self._spans))
                    self._flushed += self._used
                    self._used = 0
            finally:
                self._jobs.put(None)
                self._worker.join()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()
