"""Content hashing for the scanner: one file, a batch of files, and a pool of processes.

Hashing is where a scan spends its time. On a typical image most files are a
few KiB, so the cost per file (open, read, close, and Python's own overhead)
outweighs SHA-256 itself; threads do not help, processes do. A batch therefore
reads every file with one reused buffer and as few system calls as possible,
and :class:`HashPool` spreads batches over forked worker processes so that all
cores hash while the parent walks the tree.

A file that vanished or cannot be read yields an :class:`EntryError` code
instead of a digest; hashing never raises for one bad file.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Sequence
from multiprocessing.pool import AsyncResult, Pool

from agent.manifest import EntryError

BUFFER_BYTES = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

FileJob = tuple[bytes, int, int]
"""A file to hash: (absolute path, inode from lstat, size from lstat)."""

Outcome = bytes | int
"""A 32-byte SHA-256 digest, or an :class:`EntryError` value when the file could not be read."""

_buffer: memoryview | None = None


def _shared_buffer() -> memoryview:
    """One read buffer per process, allocated on first use (after a fork)."""
    global _buffer  # noqa: PLW0603 - a per-process scratch buffer, never shared across processes
    if _buffer is None:
        _buffer = memoryview(bytearray(BUFFER_BYTES))
    return _buffer


def hash_file(path: bytes, ino: int, size: int, buffer: memoryview | None = None) -> Outcome:
    """SHA-256 of the regular file at ``path``, which ``lstat`` saw with ``ino`` and ``size``.

    The file is opened without following a symlink and without blocking, so a
    file replaced by a FIFO or a link between the walk and the read cannot hang
    or redirect the scan; a different inode means the listed file is gone.
    """
    view = buffer if buffer is not None else _shared_buffer()
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return int(EntryError.VANISHED)
    except OSError as exc:
        # ELOOP: the name is now a symlink, so the file that was listed is gone.
        gone = exc.errno == errno.ELOOP
        return int(EntryError.VANISHED if gone else EntryError.UNREADABLE)
    try:
        if os.fstat(fd).st_ino != ino:
            return int(EntryError.VANISHED)
        digest = hashlib.sha256()
        capacity = len(view)
        total = 0
        while True:
            count = os.readv(fd, (view,))
            if not count:
                break
            digest.update(view[:count])
            total += count
            # A short read that reaches the listed size is the end of the file:
            # this saves the extra read() that would only return b"".
            if count < capacity and total >= size:
                break
        return digest.digest()
    except OSError:
        return int(EntryError.UNREADABLE)
    finally:
        os.close(fd)


def hash_batch(jobs: Sequence[FileJob]) -> list[Outcome]:
    """Hash every file of a batch, in order, with this process's buffer."""
    view = _shared_buffer()
    return [hash_file(path, ino, size, view) for path, ino, size in jobs]


class HashPool:
    """Forked worker processes that hash batches while the caller keeps walking.

    Batches are submitted with a caller-chosen tag and come back, with their
    tag and in submission order, from :meth:`submit` (those already finished)
    and :meth:`drain` (all the rest). At most ``MAX_IN_FLIGHT`` batches per
    worker are outstanding: a walk that runs ahead waits for the oldest, which
    bounds the memory held for pending files. Processes are forked on the first
    submit, so a scan that finds nothing to hash never starts one.
    """

    MAX_IN_FLIGHT = 4

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Pool | None = None
        self._pending: deque[tuple[object, AsyncResult[list[Outcome]]]] = deque()

    def submit(self, tag: object, jobs: list[FileJob]) -> list[tuple[object, list[Outcome]]]:
        """Queue a batch; returns the batches finished so far (waiting if too many are out)."""
        if self._pool is None:
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
        self._pending.append((tag, self._pool.apply_async(hash_batch, (jobs,))))
        done = []
        limit = self.MAX_IN_FLIGHT * self.workers
        while self._pending and (len(self._pending) > limit or self._pending[0][1].ready()):
            tag, result = self._pending.popleft()
            done.append((tag, result.get()))
        return done

    def drain(self) -> list[tuple[object, list[Outcome]]]:
        """Wait for every submitted batch."""
        done = [(tag, result.get()) for tag, result in self._pending]
        self._pending.clear()
        return done

    def close(self) -> None:
        """Stop the workers (waiting for them when every batch was collected)."""
        if self._pool is None:
            return
        if self._pending:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()
        self._pool = None
        self._pending.clear()
