"""The stat cache: what the agent need not recompute while a filesystem object is unchanged.

A regular file whose (inode, size, mtime_ns, ctime_ns) stamp is the one seen
when it was last hashed keeps its digest; anything that rewrites, renames over
or chmods a file changes its ctime, so a stale digest is never reused. Other
objects (directories, symlinks, device nodes, FIFOs) are stamped with (inode,
mode, uid, gid, mtime_ns, ctime_ns) and keep their leaf hash, and a symlink its
target (a new target is a new inode, and ctime moves with any change). An
object touched within ``racy_window_ns`` of the scan that recorded it is not
cached at all: a write in the same timestamp tick would otherwise go unnoticed.

When every entry of a scan is in the cache, the cache also keeps the scan's
root: the root over exactly the leaves it holds. A rescan that finds every
object unchanged (and nothing added or removed) reuses it instead of
recomputing the root.

The agent keeps the cache in its data directory between runs. The file format
(version 2, little-endian) is::

    magic "corral-statcache" | u32 version | u32 file count | u32 other count
    u32 signature length | 32s root (32 zero bytes: none)
    the leaf signature (UTF-8)
    file count x (u64 ino, u64 size, i64 mtime_ns, i64 ctime_ns, 32s digest, 32s leaf,
                  u32 path length)              (a leaf of 32 zero bytes: none)
    other count x (u64 ino, u32 mode, u32 uid, u32 gid, i64 mtime_ns, i64 ctime_ns,
                   32s leaf, u32 path length, u32 target length)
    the file paths, then each other path followed by its symlink target
    sha256 of everything above

Version 1 files (regular files only, no root) are still read. A missing file
starts an empty cache silently; a corrupt or foreign one starts an empty cache
with a warning (the next scan re-hashes everything).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct

log = logging.getLogger(__name__)

MAGIC = b"corral-statcache"
VERSION = 2
RACY_WINDOW_NS = 2_000_000_000
_PREFIX = struct.Struct("<16sI")  # magic, version: what every version starts with
_HEADER = struct.Struct("<16sIIII32s")
_HEADER_V1 = struct.Struct("<16sIII")
_RECORD = struct.Struct("<QQqq32s32sI")  # a regular file (the only record of version 1)
_OTHER = struct.Struct("<QIIIqq32sII")
_NO_LEAF = bytes(32)

Stamp = tuple[int, ...]
"""From lstat: (inode, size, mtime_ns, ctime_ns) of a regular file, (inode, mode, uid,
gid, mtime_ns, ctime_ns) of anything else. The lengths differ, so the two never match."""

Record = tuple[Stamp, bytes, bytes]
"""What the cache knows of one path: its stamp, its content (a regular file's digest, a
symlink's target, else b"") and its leaf hash (or b"")."""


def stamp_of(st: os.stat_result) -> Stamp:
    """The stamp of a regular file."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def other_stamp_of(st: os.stat_result) -> Stamp:
    """The stamp of a directory, symlink, device node, FIFO or socket."""
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)


class StatCache:
    """Digests, symlink targets and leaf hashes keyed by path, valid while their stamp holds.

    A leaf depends on the attributes the policy ignores; ``leaf_signature``
    names the policy the leaves were computed under, and the scanner drops them
    when it scans under another. ``root`` is the root over the leaves of exactly
    the records held, or None.
    """

    def __init__(self, *, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.racy_window_ns = racy_window_ns
        self.leaf_signature = ""
        self.root: bytes | None = None
        self.records: dict[bytes, Record] = {}
        """path -> (stamp, content, leaf). Read directly by the scanner's hot loop."""
        self.changed = False
        """Whether the records differ from what was loaded or last saved."""

    def __len__(self) -> int:
        return len(self.records)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatCache) and (
            self.leaf_signature,
            self.root,
            self.records,
        ) == (other.leaf_signature, other.root, other.records)

    __hash__ = None  # type: ignore[assignment]

    def lookup(self, path: bytes, st: os.stat_result) -> bytes | None:
        """The digest recorded for the regular file ``path`` if its stamp is still ``st``'s."""
        record = self.records.get(path)
        if record is not None and record[0] == stamp_of(st):
            return record[1]
        return None

    def store(self, path: bytes, st: os.stat_result, digest: bytes, leaf: bytes = b"") -> None:
        """Record ``digest`` as the content of ``path`` while its stamp is the one in ``st``."""
        self.records[path] = (stamp_of(st), digest, leaf)
        self.root = None
        self.changed = True

    def replace_records(
        self,
        records: dict[bytes, Record],
        *,
        leaf_signature: str,
        root: bytes | None = None,
        changed: bool = True,
    ) -> None:
        """Swap in the records of a completed scan (the scanner's new generation).

        ``root`` must be the root over exactly the leaves of ``records`` (or None);
        ``changed=False`` says they are the very records held before (nothing to save).
        """
        self.records = records
        self.leaf_signature = leaf_signature
        self.root = root
        self.changed = self.changed or changed

    def encode(self) -> bytes:
        """The cache in the versioned file format (paths in sorted order)."""
        signature = self.leaf_signature.encode()
        files: list[bytes] = []
        file_paths: list[bytes] = []
        others: list[bytes] = []
        other_paths: list[bytes] = []
        for path in sorted(self.records):
            stamp, content, leaf = self.records[path]
            if len(stamp) == 4:
                ino, size, mtime_ns, ctime_ns = stamp
                files.append(
                    _RECORD.pack(
                        ino, size, mtime_ns, ctime_ns, content, leaf or _NO_LEAF, len(path)
                    )
                )
                file_paths.append(path)
            else:
                ino, mode, uid, gid, mtime_ns, ctime_ns = stamp
                fields = (ino, mode, uid, gid, mtime_ns, ctime_ns, leaf or _NO_LEAF)
                others.append(_OTHER.pack(*fields, len(path), len(content)))
                other_paths += (path, content)
        root = self.root or _NO_LEAF
        header = _HEADER.pack(MAGIC, VERSION, len(files), len(others), len(signature), root)
        body = b"".join([header, signature, *files, *others, *file_paths, *other_paths])
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, data: bytes, *, racy_window_ns: int = RACY_WINDOW_NS) -> StatCache:
        """Parse :meth:`encode` output. Raises ValueError when it is not a valid cache."""
        body, checksum = data[:-32], data[-32:]
        if len(data) < _PREFIX.size + 32 or hashlib.sha256(body).digest() != checksum:
            raise ValueError("checksum mismatch (truncated or corrupt)")
        magic, version = _PREFIX.unpack_from(body)
        if magic != MAGIC:
            raise ValueError("not a corral stat cache")
        root = _NO_LEAF
        header = _HEADER_V1 if version == 1 else _HEADER
        if len(body) < header.size:
            raise ValueError("truncated header")
        if version == 1:
            _, _, count, signature_length = _HEADER_V1.unpack_from(body)
            other_count, start = 0, _HEADER_V1.size
        elif version == VERSION:
            _, _, count, other_count, signature_length, root = _HEADER.unpack_from(body)
            start = _HEADER.size
        else:
            raise ValueError(f"format version {version}, expected {VERSION}")
        cache = cls(racy_window_ns=racy_window_ns)
        cache.leaf_signature = body[start : start + signature_length].decode()
        cache.root = None if root == _NO_LEAF else root
        start += signature_length
        end_of_files = start + count * _RECORD.size
        end_of_records = end_of_files + other_count * _OTHER.size
        if end_of_records > len(body):
            raise ValueError("record count exceeds the file")
        records = cache.records
        offset = end_of_records
        for ino, size, mtime_ns, ctime_ns, digest, leaf, length in _RECORD.iter_unpack(
            body[start:end_of_files]
        ):
            path = body[offset : offset + length]
            records[path] = (
                (ino, size, mtime_ns, ctime_ns),
                digest,
                b"" if leaf == _NO_LEAF else leaf,
            )
            offset += length
        for *stamp, leaf, length, target_length in _OTHER.iter_unpack(
            body[end_of_files:end_of_records]
        ):
            path = body[offset : offset + length]
            offset += length
            target = body[offset : offset + target_length]
            offset += target_length
            records[path] = (tuple(stamp), target, b"" if leaf == _NO_LEAF else leaf)
        if offset != len(body):
            raise ValueError("path lengths do not match the file")
        return cache

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache atomically (temporary file, fsync, rename)."""
        target = os.fspath(path)
        temporary = f"{target}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(self.encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        self.changed = False

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, racy_window_ns: int = RACY_WINDOW_NS
    ) -> StatCache:
        """Read a saved cache; a missing, unreadable or corrupt file gives an empty cache."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return cls(racy_window_ns=racy_window_ns)
        except OSError as exc:
            log.warning("stat cache %s unreadable (%s); starting empty", path, exc.strerror)
            return cls(racy_window_ns=racy_window_ns)
        try:
            return cls.decode(data, racy_window_ns=racy_window_ns)
        except (ValueError, struct.error) as exc:
            log.warning("stat cache %s ignored: %s; starting empty", path, exc)
            return cls(racy_window_ns=racy_window_ns)
