"""Content hashing for the scanner: one file, or a batch of files with one buffer.

Hashing is where a scan spends its time. On a typical image most files are a
few KiB, so the cost per file (open, read, close, and Python's own overhead)
outweighs SHA-256 itself; threads do not help, processes do. A batch therefore
reads every file with one reused buffer and as few system calls as possible,
and :mod:`agent.scan.hashpool` spreads batches over forked worker processes so that
all cores hash while the parent walks the tree.

A file that vanished or cannot be read yields an :class:`EntryError` code
instead of a digest; hashing never raises for one bad file.

A scan that has no stat cache to consult need not lstat the regular files it
lists: :func:`hash_listed` takes the attributes from the opened file itself
(the ``fstat`` that hashing does anyway), so the walking process saves a
system call per file and the attributes describe the very file that was read.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
from collections.abc import Sequence

from agent.manifest.format import EntryError

BUFFER_BYTES = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

FileJob = tuple[bytes, int, int]
"""A file to hash: (absolute path, inode from lstat, size from lstat)."""

Ranges = list[tuple[int, int]]
"""Where a file's content lies in a larger file, in order: (offset, length) pairs; an
offset of -1 stands for ``length`` zero bytes (a hole of a sparse file)."""

RangeBatch = tuple[bytes, int, int, list[Ranges]]
"""Files stored inside one file: (its path, device, inode, each file's :data:`Ranges`)."""

Outcome = bytes | int
"""A 32-byte SHA-256 digest, or an :class:`EntryError` value when the file could not be read."""

StatFields = tuple[int, ...]
"""(mode, ino, uid, gid, size, mtime_ns, ctime_ns) of a regular file, or () when there is none."""

Listed = tuple[Outcome, StatFields]
"""What :func:`hash_listed` found: the outcome and the file's attributes."""

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
    except OSError as exc:
        return _open_error(exc)
    try:
        if os.fstat(fd).st_ino != ino:
            return int(EntryError.VANISHED)
        return _read_digest(fd, size, view)
    except OSError:
        return int(EntryError.UNREADABLE)
    finally:
        os.close(fd)


def hash_listed(path: bytes, buffer: memoryview | None = None) -> Listed:
    """SHA-256 and attributes of the file at ``path``, which a listing showed as regular.

    Opened as :func:`hash_file` does. A name that is no longer a regular file
    is VANISHED (and never read); a file that cannot be opened is examined with
    lstat, so that its entry still records what can be seen of it.
    """
    view = buffer if buffer is not None else _shared_buffer()
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        try:
            st = os.lstat(path)
        except OSError:
            return int(EntryError.VANISHED), ()
        if not stat.S_ISREG(st.st_mode):
            return int(EntryError.VANISHED), ()
        return _open_error(exc), _fields(st)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return int(EntryError.VANISHED), ()
        try:
            return _read_digest(fd, st.st_size, view), _fields(st)
        except OSError:
            return int(EntryError.UNREADABLE), _fields(st)
    finally:
        os.close(fd)


def _open_error(exc: OSError) -> int:
    # ELOOP: the name is now a symlink, so the file that was listed is gone.
    gone = isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno == errno.ELOOP
    return int(EntryError.VANISHED if gone else EntryError.UNREADABLE)


def _fields(st: os.stat_result) -> StatFields:
    return (st.st_mode, st.st_ino, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_digest(fd: int, size: int, view: memoryview) -> bytes:
    """SHA-256 of an open file expected to hold ``size`` bytes. Raises OSError."""
    digest = hashlib.sha256()
    capacity = len(view)
    total = 0
    while True:
        count = os.readv(fd, (view,))
        if not count:
            break
        digest.update(view[:count])
        total += count
        # A short read that reaches the expected size is the end of the file:
        # this saves the extra read() that would only return b"".
        if count < capacity and total >= size:
            break
    return digest.digest()


SEEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""How a file that holds others (an image layer's blob) is opened, every time: following
a symlink to it, as its name was given, and never waiting on a FIFO put in its place."""


def open_seen(path: bytes, device: int, inode: int) -> tuple[int, os.stat_result] | None:
    """The file at ``path``, opened with :data:`SEEN_FLAGS`, and its attributes, if it is
    still the file seen before (``device`` and ``inode``); None (and nothing left open) if
    the name now holds another. Raises OSError when it cannot be opened."""
    fd = os.open(path, SEEN_FLAGS)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == (device, inode):
        return fd, st
    os.close(fd)
    return None


def hash_ranges(path: bytes, device: int, inode: int, files: Sequence[Ranges]) -> list[Outcome]:
    """SHA-256 of each file stored as ``ranges`` of the file at ``path`` (a layer blob).

    The file must still be the one the caller saw (``device`` and ``inode``)
    and hold every range; if not, every outcome is VANISHED or UNREADABLE: the
    caller cannot trust what it would read. The span the batch covers is
    mapped, not read: SHA-256 runs over the page cache itself, with no copy.
    (A file cut short after the check would end this worker with SIGBUS; its
    caller sees a worker die, and fails as for an unreadable file.)
    """
    try:
        seen = open_seen(path, device, inode)
    except OSError as exc:
        return [_open_error(exc)] * len(files)
    if seen is None:
        return [int(EntryError.VANISHED)] * len(files)
    fd, st = seen
    try:
        stored = [(offset, length) for ranges in files for offset, length in ranges if offset >= 0]
        if not stored:
            return [_digest_of(_EMPTY_VIEW, 0, ranges) for ranges in files]
        low = min(offset for offset, _ in stored) // mmap.ALLOCATIONGRANULARITY
        low *= mmap.ALLOCATIONGRANULARITY
        high = max(offset + length for offset, length in stored)
        if high > st.st_size:
            return [int(EntryError.UNREADABLE)] * len(files)
        with mmap.mmap(fd, high - low, prot=mmap.PROT_READ, offset=low) as mapped:
            if high - low > _SEQUENTIAL:
                mapped.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(mapped) as view:
                return [_digest_of(view, low, ranges) for ranges in files]
    except OSError:
        return [int(EntryError.UNREADABLE)] * len(files)
    finally:
        os.close(fd)


_EMPTY_VIEW = memoryview(b"")
_SEQUENTIAL = 16 << 20


def _digest_of(view: memoryview, origin: int, ranges: Ranges) -> bytes:
    """SHA-256 of ``ranges`` of the file ``view`` maps from ``origin`` (-1: zeros)."""
    digest = hashlib.sha256()
    for offset, length in ranges:
        if offset < 0:
            _add_zeros(digest, length)
        else:
            start = offset - origin
            digest.update(view[start : start + length])
    return digest.digest()


_ZEROS = memoryview(bytes(1 << 16))


def _add_zeros(digest: hashlib._Hash, count: int) -> None:
    while count > 0:
        digest.update(_ZEROS[: min(count, len(_ZEROS))])
        count -= len(_ZEROS)


Batch = list[FileJob | bytes] | RangeBatch
"""What a hashing worker takes at once: files by path (:func:`hash_batch`), or files stored
inside one file (:func:`hash_ranges`)."""


def hash_any(batch: Batch) -> list[Outcome | Listed] | list[Outcome]:
    """Hash a batch of either kind."""
    if isinstance(batch, tuple):  # marshal keeps a tuple a tuple
        return hash_ranges(*batch)
    return hash_batch(batch)


def hash_batch(jobs: Sequence[FileJob | bytes]) -> list[Outcome | Listed]:
    """Hash every file of a batch, in order, with this process's buffer.

    A job is a :data:`FileJob`, or only a path for :func:`hash_listed`.
    """
    view = _shared_buffer()
    return [
        hash_listed(job, view) if isinstance(job, bytes) else hash_file(*job, view) for job in jobs
    ]
