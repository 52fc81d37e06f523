"""The stat cache: content digests the agent need not recompute while a file is unchanged.

A regular file whose (inode, size, mtime_ns, ctime_ns) stamp is the one seen
when it was last hashed keeps its digest; anything that rewrites, renames over
or chmods a file changes its ctime, so a stale digest is never reused. A file
touched within ``racy_window_ns`` of the scan that hashed it is not cached at
all: a write in the same timestamp tick would otherwise go unnoticed.

The agent keeps the cache in its state directory between runs. The file format
(version 1, little-endian) is::

    magic "corral-statcache" | u32 version | u32 count | u32 signature length
    the leaf signature (UTF-8)
    count x (u64 ino, u64 size, i64 mtime_ns, i64 ctime_ns, 32s digest, 32s leaf,
             u32 path length)                   (a leaf of 32 zero bytes: none)
    the paths, concatenated
    sha256 of everything above

A missing file starts an empty cache silently; a corrupt or foreign one starts
an empty cache with a warning (the next scan re-hashes everything).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Iterable

log = logging.getLogger(__name__)

MAGIC = b"corral-statcache"
VERSION = 1
RACY_WINDOW_NS = 2_000_000_000
_HEADER = struct.Struct("<16sIII")
_RECORD = struct.Struct("<QQqq32s32sI")
_NO_LEAF = bytes(32)

Stamp = tuple[int, int, int, int]
"""(inode, size, mtime_ns, ctime_ns) of a regular file, from lstat."""

Record = tuple[Stamp, bytes, bytes]
"""What the cache knows of one path: its stamp, content digest and leaf hash (or b"")."""


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StatCache:
    """Content digests of regular files keyed by path, valid while their stamp holds.

    Beside the digest, the cache may hold the file's leaf hash (the hash of its
    manifest entry), so that an unchanged tree's root costs no re-encoding. A
    leaf depends on the attributes the policy ignores; ``leaf_signature`` names
    the policy the leaves were computed under, and the scanner drops them when
    it scans under another.
    """

    def __init__(self, *, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.racy_window_ns = racy_window_ns
        self.leaf_signature = ""
        self.records: dict[bytes, Record] = {}
        """path -> (stamp, digest, leaf). Read directly by the scanner's hot loop."""

    def __len__(self) -> int:
        return len(self.records)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatCache) and (self.leaf_signature, self.records) == (
            other.leaf_signature,
            other.records,
        )

    __hash__ = None  # type: ignore[assignment]

    def lookup(self, path: bytes, st: os.stat_result) -> bytes | None:
        """The digest recorded for ``path`` if its stamp is still the one in ``st``."""
        record = self.records.get(path)
        if record is not None and record[0] == stamp_of(st):
            return record[1]
        return None

    def store(self, path: bytes, st: os.stat_result, digest: bytes, leaf: bytes = b"") -> None:
        """Record ``digest`` as the content of ``path`` while its stamp is the one in ``st``."""
        self.records[path] = (stamp_of(st), digest, leaf)

    def retain(self, paths: Iterable[bytes]) -> None:
        """Forget every path not in ``paths`` (files gone since the last scan)."""
        keep = set(paths)
        self.records = {path: record for path, record in self.records.items() if path in keep}

    def replace_records(self, records: dict[bytes, Record], *, leaf_signature: str) -> None:
        """Swap in the records of a completed scan (the scanner's new generation)."""
        self.records = records
        self.leaf_signature = leaf_signature

    def encode(self) -> bytes:
        """The cache in the versioned file format (paths in sorted order)."""
        signature = self.leaf_signature.encode()
        packed = []
        paths = []
        for path in sorted(self.records):
            (ino, size, mtime_ns, ctime_ns), digest, leaf = self.records[path]
            packed.append(
                _RECORD.pack(ino, size, mtime_ns, ctime_ns, digest, leaf or _NO_LEAF, len(path))
            )
            paths.append(path)
        header = _HEADER.pack(MAGIC, VERSION, len(packed), len(signature))
        body = b"".join([header, signature, *packed, *paths])
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, data: bytes, *, racy_window_ns: int = RACY_WINDOW_NS) -> StatCache:
        """Parse :meth:`encode` output. Raises ValueError when it is not a valid cache."""
        body, checksum = data[:-32], data[-32:]
        if len(data) < _HEADER.size + 32 or hashlib.sha256(body).digest() != checksum:
            raise ValueError("checksum mismatch (truncated or corrupt)")
        magic, version, count, signature_length = _HEADER.unpack_from(body)
        if magic != MAGIC:
            raise ValueError("not a corral stat cache")
        if version != VERSION:
            raise ValueError(f"format version {version}, expected {VERSION}")
        start = _HEADER.size + signature_length
        end_of_records = start + count * _RECORD.size
        if end_of_records > len(body):
            raise ValueError("record count exceeds the file")
        cache = cls(racy_window_ns=racy_window_ns)
        cache.leaf_signature = body[_HEADER.size : start].decode()
        records = cache.records
        offset = end_of_records
        for ino, size, mtime_ns, ctime_ns, digest, leaf, length in _RECORD.iter_unpack(
            body[start:end_of_records]
        ):
            path = body[offset : offset + length]
            records[path] = (
                (ino, size, mtime_ns, ctime_ns),
                digest,
                b"" if leaf == _NO_LEAF else leaf,
            )
            offset += length
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
