"""Content hashing for the scanner: one file, or a batch of files with one buffer.

Hashing is where a scan spends its time. On a typical image most files are a
few KiB, so the cost per file (open, read, close, and Python's own overhead)
outweighs SHA-256 itself; threads do not help, processes do. A batch therefore
reads every file with one reused buffer and as few system calls as possible,
and :mod:`agent.hashpool` spreads batches over forked worker processes so that
all cores hash while the parent walks the tree.

A file that vanished or cannot be read yields an :class:`EntryError` code
instead of a digest; hashing never raises for one bad file.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence

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
