"""Scan a root: walk it without following symlinks and record one Entry per object.

The scanner is read-only. It never opens FIFOs, sockets or device nodes, never
follows a symlink, and records a file that vanishes or cannot be read mid-scan
with an error instead of failing. A :class:`StatCache` lets a rescan skip
hashing files whose (inode, size, mtime_ns, ctime_ns) did not change.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.manifest import Entry, EntryError, EntryType, root_of
from agent.policy import Policy

Progress = Callable[[int, int], None]
"""Called with (entries seen, bytes hashed) from time to time during a scan."""

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class _Stamp:
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


class StatCache:
    """Content digests of regular files keyed by path, valid while their stat stamp holds."""

    def __init__(self) -> None:
        self._digests: dict[bytes, tuple[_Stamp, bytes]] = {}

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, path: bytes, st: os.stat_result) -> bytes | None:
        cached = self._digests.get(path)
        if cached is None:
            return None
        stamp, digest = cached
        if stamp == _Stamp(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return digest
        return None

    def store(self, path: bytes, st: os.stat_result, digest: bytes) -> None:
        self._digests[path] = (_Stamp(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), digest)

    def retain(self, paths: set[bytes]) -> None:
        """Forget every path not in ``paths`` (files gone since the last scan)."""
        for path in [p for p in self._digests if p not in paths]:
            del self._digests[path]


@dataclass(frozen=True)
class ScanResult:
    """What a scan found: entries sorted by path, the root, and what it cost."""

    entries: list[Entry]
    root: bytes
    files_hashed: int
    files_cached: int
    bytes_hashed: int
    errors: int
    seconds: float


def _type_of(mode: int) -> EntryType:
    if stat.S_ISREG(mode):
        return EntryType.REGULAR
    if stat.S_ISDIR(mode):
        return EntryType.DIRECTORY
    if stat.S_ISLNK(mode):
        return EntryType.SYMLINK
    if stat.S_ISCHR(mode):
        return EntryType.CHAR_DEVICE
    if stat.S_ISBLK(mode):
        return EntryType.BLOCK_DEVICE
    if stat.S_ISFIFO(mode):
        return EntryType.FIFO
    return EntryType.SOCKET


def _hash_file(path: bytes, expected_ino: int) -> bytes:
    """SHA-256 of a regular file, opened without following links or blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != expected_ino:
            raise FileNotFoundError(path)  # replaced between lstat and open
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return digest.digest()
    finally:
        os.close(fd)


def _entry(rel: bytes, st: os.stat_result, policy: Policy, **fields: object) -> Entry:
    kind = _type_of(st.st_mode)
    values: dict[str, object] = {
        "path": rel,
        "type": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    if kind in (EntryType.CHAR_DEVICE, EntryType.BLOCK_DEVICE):
        values["rdev_major"] = os.major(st.st_rdev)
        values["rdev_minor"] = os.minor(st.st_rdev)
    values.update(fields)
    for attribute, names in _IGNORABLE.items():
        if policy.ignores(attribute):
            for name in names:
                values[name] = type(values.get(name, 0))() if name in values else 0
    return Entry(**values)  # type: ignore[arg-type]


_IGNORABLE: dict[str, tuple[str, ...]] = {
    "mode": ("mode",),
    "uid": ("uid",),
    "gid": ("gid",),
    "size": ("size",),
    "content": ("sha256",),
    "device": ("rdev_major", "rdev_minor"),
}


def scan(
    root: str | bytes | os.PathLike[str],
    policy: Policy,
    *,
    cache: StatCache | None = None,
    full_rehash: bool = False,
    progress: Progress | None = None,
) -> ScanResult:
    """Walk ``root`` under ``policy`` and return every entry, sorted by path.

    Paths in entries are absolute inside ``root`` (``b"/etc/hostname"``). With a
    ``cache``, files whose stat stamp is unchanged are not re-hashed unless
    ``full_rehash``. Raises FileNotFoundError/NotADirectoryError when ``root``
    itself is missing.
    """
    started = time.monotonic()
    base = os.fsencode(root).rstrip(b"/")
    if not os.path.isdir(base or b"/"):
        raise NotADirectoryError(f"scan root {os.fsdecode(base or b'/')} is not a directory")
    entries: list[Entry] = []
    counters = {"hashed": 0, "cached": 0, "bytes": 0, "errors": 0}

    def record_file(rel: bytes, st: os.stat_result) -> Entry:
        digest = None if cache is None or full_rehash else cache.lookup(rel, st)
        if digest is not None:
            counters["cached"] += 1
            return _entry(rel, st, policy, size=st.st_size, sha256=digest)
        try:
            digest = _hash_file(base + rel, st.st_ino)
        except FileNotFoundError:
            counters["errors"] += 1
            return _entry(rel, st, policy, size=st.st_size, error=EntryError.VANISHED)
        except OSError:
            counters["errors"] += 1
            return _entry(rel, st, policy, size=st.st_size, error=EntryError.UNREADABLE)
        counters["hashed"] += 1
        counters["bytes"] += st.st_size
        if cache is not None:
            cache.store(rel, st, digest)
        return _entry(rel, st, policy, size=st.st_size, sha256=digest)

    def visit(rel: bytes, device: int | None) -> None:
        path = base + rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            counters["errors"] += 1
            entries.append(Entry(rel, EntryType.REGULAR, 0, 0, 0, error=EntryError.VANISHED))
            return
        kind = _type_of(st.st_mode)
        if kind is EntryType.REGULAR:
            entries.append(record_file(rel, st))
        elif kind is EntryType.SYMLINK:
            try:
                target = os.readlink(path)
            except OSError:
                counters["errors"] += 1
                entries.append(_entry(rel, st, policy, error=EntryError.VANISHED))
                return
            entries.append(
                _entry(rel, st, policy, link_target=target, sha256=hashlib.sha256(target).digest())
            )
        elif kind is EntryType.DIRECTORY:
            if device is not None and st.st_dev != device:
                entries.append(_entry(rel, st, policy))  # a mount point: recorded, not entered
                return
            try:
                with os.scandir(path) as listing:
                    names = sorted(item.name for item in listing)
            except FileNotFoundError:
                counters["errors"] += 1
                entries.append(_entry(rel, st, policy, error=EntryError.VANISHED))
                return
            except OSError:
                counters["errors"] += 1
                entries.append(_entry(rel, st, policy, error=EntryError.UNREADABLE))
                return
            entries.append(_entry(rel, st, policy))
            prefix = rel if rel != b"/" else b""
            for name in names:
                child = prefix + b"/" + name
                if not policy.excludes(child):
                    visit(child, device)
        else:
            entries.append(_entry(rel, st, policy))
        if progress is not None and len(entries) % 1000 == 0:
            progress(len(entries), counters["bytes"])

    for include in policy.include:
        rel = include.encode("utf-8", "surrogateescape").rstrip(b"/") or b"/"
        if policy.excludes(rel) or not os.path.lexists(base + rel):
            continue
        device = os.lstat(base + rel).st_dev if policy.one_filesystem else None
        visit(rel, device)
    entries.sort(key=lambda entry: entry.path)
    if cache is not None:
        cache.retain({entry.path for entry in entries})
    return ScanResult(
        entries=entries,
        root=root_of(entries),
        files_hashed=counters["hashed"],
        files_cached=counters["cached"],
        bytes_hashed=counters["bytes"],
        errors=counters["errors"],
        seconds=time.monotonic() - started,
    )
