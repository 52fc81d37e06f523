"""Scan a root: walk it without following symlinks and record one Entry per object.

The scanner is read-only. It never opens FIFOs, sockets or device nodes, never
follows a symlink, and records a file that vanishes or cannot be read mid-scan
with an error instead of failing. A :class:`StatCache` lets a rescan skip
hashing files whose (inode, size, mtime_ns, ctime_ns) did not change.

How it is fast: the calling process walks the tree (``scandir`` + ``lstat``,
an explicit stack, so depth is unbounded) and hands regular files in batches
to forked hashing processes (:mod:`agent.hashing`), collecting finished
batches as it goes. Entries are plain tuples, sorted once at the end. With a
cache, the scan also keeps each entry's leaf hash (cached for unchanged files),
so the root of an unchanged tree needs no re-encoding. The result depends only
on the tree, never on the number of workers.
"""

from __future__ import annotations

import gc
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from hashlib import sha256
from operator import itemgetter

from agent.hashing import FileJob, Outcome, hash_file
from agent.hashpool import HashPool
from agent.manifest import Entry, EntryError, EntryType, leaf_hash, root_of
from agent.merkle import compute_root
from agent.policy import Policy
from agent.readbudget import TokenBucket
from agent.scanrules import Exclusions, ignoring, include_roots, leaf_signature
from agent.statcache import Record, StatCache, stamp_of

__all__ = ["Progress", "ScanResult", "StatCache", "default_workers", "entry_from_stat", "scan"]

Progress = Callable[[int, int], None]
"""Called with (entries seen, bytes hashed) about every thousand entries during a scan."""

BATCH_FILES = 256
BATCH_BYTES = 16 << 20
_PROGRESS_EVERY = 1000

_TYPES = {
    stat.S_IFREG: EntryType.REGULAR,
    stat.S_IFDIR: EntryType.DIRECTORY,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFCHR: EntryType.CHAR_DEVICE,
    stat.S_IFBLK: EntryType.BLOCK_DEVICE,
    stat.S_IFIFO: EntryType.FIFO,
    stat.S_IFSOCK: EntryType.SOCKET,
}
_REGULAR = EntryType.REGULAR
_NO_ERROR = EntryError.NONE
_new_tuple = tuple.__new__  # builds an Entry without NamedTuple.__new__'s Python frame
_path_of = itemgetter(0)  # Entry.path, as a C-level sort key
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG

_Pending = tuple[bytes, os.stat_result]
"""A regular file waiting for its digest: (path inside the root, its lstat)."""


def default_workers() -> int:
    """One hashing process per CPU this process may run on."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class ScanResult:
    """What a scan found: entries sorted by path, and what it cost.

    ``root`` is computed on first use (baking builds a manifest, which computes
    the same root, and need not pay twice); after a scan with a cache the leaf
    hashes are already known and the root is cheap.
    """

    entries: list[Entry]
    files_hashed: int
    files_cached: int
    bytes_hashed: int
    errors: int
    seconds: float
    _leaves: list[bytes] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def root(self) -> bytes:
        if self._leaves is not None:
            return compute_root(self._leaves)
        return root_of(self.entries)


def _regular(
    path: bytes, st: os.stat_result, digest: bytes, error: EntryError = _NO_ERROR
) -> Entry:
    fields = (path, _REGULAR, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size)
    return _new_tuple(Entry, (*fields, digest, b"", 0, 0, error))


def _entry(
    path: bytes,
    st: os.stat_result,
    kind: EntryType,
    digest: bytes = b"",
    target: bytes = b"",
    *,
    error: EntryError = _NO_ERROR,
) -> Entry:
    major = minor = 0
    if kind is EntryType.CHAR_DEVICE or kind is EntryType.BLOCK_DEVICE:
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    mode = st.st_mode & 0o7777
    return Entry(path, kind, mode, st.st_uid, st.st_gid, 0, digest, target, major, minor, error)


def entry_from_stat(
    path: bytes,
    st: os.stat_result,
    *,
    digest: bytes = b"",
    target: bytes = b"",
    owner: tuple[int, int] | None = None,
) -> Entry | None:
    """The entry a scan records for ``path`` seen with ``st`` (None for a socket).

    ``digest`` is a regular file's content digest, ``target`` a symlink's
    target (whose digest is derived here). ``owner`` replaces the stat's uid
    and gid: an image build records owners as they will be unpacked. Sockets
    cannot be archived, so an image leaves them out.
    """
    kind = _TYPES.get(stat.S_IFMT(st.st_mode), EntryType.SOCKET)
    if kind is EntryType.SOCKET:
        return None
    if kind is _REGULAR:  # the common case, built in one step
        uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
        fields = (path, _REGULAR, st.st_mode & 0o7777, uid, gid, st.st_size)
        return _new_tuple(Entry, (*fields, digest, b"", 0, 0, _NO_ERROR))
    if kind is EntryType.SYMLINK:
        entry = _entry(path, st, kind, sha256(target).digest(), target)
    else:
        entry = _entry(path, st, kind)
    return entry if owner is None else entry._replace(uid=owner[0], gid=owner[1])


class _Scan:
    """The state of one scan: the walk, the pending hashes, the leaves and the counters."""

    def __init__(
        self,
        base: bytes,
        policy: Policy,
        *,
        cache: StatCache | None,
        full_rehash: bool,
        progress: Progress | None,
        workers: int,
        read_budget: TokenBucket | None,
    ) -> None:
        self.base = base
        self.policy = policy
        self.exclusions = Exclusions(policy)
        self.strip = ignoring(policy)
        self.cache = cache
        self.signature = leaf_signature(policy)
        self.old_records: dict[bytes, Record] = {}
        if cache is not None and not full_rehash:
            self.old_records = cache.records
        self.reuse_leaves = cache is not None and cache.leaf_signature == self.signature
        self.new_records: dict[bytes, Record] = {}
        self.leaves: list[bytes] | None = [] if cache is not None else None
        self.racy_after = time.time_ns() - (cache.racy_window_ns if cache is not None else 0)
        self.progress = progress
        self.read_budget = read_budget
        self.pool = HashPool(workers) if workers > 0 else None
        self.batch_limit = BATCH_BYTES
        if read_budget is not None:  # smaller batches, so the budget paces evenly
            self.batch_limit = max(1, min(BATCH_BYTES, int(read_budget.burst)))
        self.entries: list[Entry] = []
        self.batch: list[_Pending] = []
        self.batch_bytes = 0
        self.hashed = self.cached = self.bytes = self.errors = 0
        self.in_flight = 0
        self.next_progress = _PROGRESS_EVERY

    def add(self, entry: Entry) -> bytes:
        """Record a finished entry; returns its leaf hash when leaves are kept (else b"")."""
        if self.strip is not None:
            entry = self.strip(entry)
        self.entries.append(entry)
        if self.leaves is None:
            return b""
        leaf = leaf_hash(entry)
        self.leaves.append(leaf)
        return leaf

    def walk(self, rel: bytes, device: int | None) -> None:
        """Record ``rel`` (an include root) and everything below it."""
        try:
            st = os.lstat(self.base + rel)
        except OSError:
            return  # an include root that does not exist is simply not checked
        stack: list[tuple[bytes, os.stat_result]] = []
        self.record(rel, st, device, stack)
        while stack:
            directory, dir_st = stack.pop()
            try:
                listing = os.scandir(self.base + directory)
            except OSError as exc:
                gone = isinstance(exc, FileNotFoundError | NotADirectoryError)
                self.errors += 1
                error = EntryError.VANISHED if gone else EntryError.UNREADABLE
                self.add(_entry(directory, dir_st, EntryType.DIRECTORY, error=error))
                continue
            self.add(_entry(directory, dir_st, EntryType.DIRECTORY))
            with listing:
                self.walk_listing(directory, listing, device, stack)
            self.maybe_report_progress()

    def walk_listing(
        self,
        directory: bytes,
        listing: Iterator[os.DirEntry[bytes]],
        device: int | None,
        stack: list[tuple[bytes, os.stat_result]],
    ) -> None:
        """Record the children of one directory.

        This loop runs once per object in the tree, so the common case (a
        regular file unchanged since the last scan) is inlined and uses locals.
        """
        prefix = directory if directory != b"/" else b""
        excludes = self.policy.excludes if self.exclusions.may_exclude(directory) else None
        old_records = self.old_records.get
        new_records = self.new_records
        entries = self.entries.append
        add_leaf = (self.leaves if self.leaves is not None else []).append
        reuse = self.reuse_leaves and self.strip is None and self.leaves is not None
        cached_count = 0
        for child in listing:
            path = prefix + b"/" + child.name
            if excludes is not None and excludes(path):
                continue
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                self.record_lost(path, child, exc)
                continue
            if st.st_mode & _S_IFMT != _S_IFREG:
                self.record(path, st, device, stack)
                continue
            cached = old_records(path)
            if cached is None or cached[0] != (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            ):
                self.record_file(path, st)
            elif reuse and cached[2]:
                head = (path, _REGULAR, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size)
                entries(_new_tuple(Entry, (*head, cached[1], b"", 0, 0, _NO_ERROR)))
                add_leaf(cached[2])
                new_records[path] = cached
                cached_count += 1
            else:
                leaf = self.add(_regular(path, st, cached[1]))
                new_records[path] = (cached[0], cached[1], leaf)
                cached_count += 1
        self.cached += cached_count

    def record(
        self,
        path: bytes,
        st: os.stat_result,
        device: int | None,
        stack: list[tuple[bytes, os.stat_result]],
    ) -> None:
        """Record anything but an unchanged regular file; a directory goes on ``stack``."""
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), EntryType.SOCKET)
        if kind is EntryType.REGULAR:
            cached = self.old_records.get(path)
            if cached is not None and cached[0] == stamp_of(st):
                self.cached += 1
                leaf = self.add(_regular(path, st, cached[1]))
                self.new_records[path] = (cached[0], cached[1], leaf)
            else:
                self.record_file(path, st)
        elif kind is EntryType.DIRECTORY:
            if device is not None and st.st_dev != device:
                self.add(_entry(path, st, kind))  # a mount point: recorded, not entered
            else:
                stack.append((path, st))  # recorded when listed, with any listing error
        elif kind is EntryType.SYMLINK:
            try:
                target = os.readlink(self.base + path)
            except OSError as exc:
                self.errors += 1
                gone = isinstance(exc, FileNotFoundError) or exc.errno == 22  # EINVAL: replaced
                error = EntryError.VANISHED if gone else EntryError.UNREADABLE
                self.add(_entry(path, st, kind, error=error))
                return
            self.add(_entry(path, st, kind, sha256(target).digest(), target))
        else:
            self.add(_entry(path, st, kind))  # never opened: FIFOs, sockets, devices

    def record_lost(self, path: bytes, child: os.DirEntry[bytes], exc: OSError) -> None:
        """A listed name whose lstat failed: it vanished (or cannot be examined)."""
        self.errors += 1
        kind = EntryType.DIRECTORY if child.is_dir(follow_symlinks=False) else EntryType.REGULAR
        error = EntryError.VANISHED if isinstance(exc, FileNotFoundError) else EntryError.UNREADABLE
        self.add(Entry(path, kind, 0, 0, 0, error=error))

    def record_file(self, path: bytes, st: os.stat_result) -> None:
        """A regular file to hash: now (no workers) or in the next batch."""
        if self.pool is None:
            if self.read_budget is not None:
                self.read_budget.take(st.st_size)
            self.finish_file(path, st, hash_file(self.base + path, st.st_ino, st.st_size))
            return
        self.batch.append((path, st))
        self.batch_bytes += st.st_size
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= self.batch_limit:
            self.submit()

    def submit(self) -> None:
        assert self.pool is not None
        if not self.batch:
            return
        if self.read_budget is not None:
            self.read_budget.take(self.batch_bytes)
        jobs: list[FileJob] = [(self.base + p, st.st_ino, st.st_size) for p, st in self.batch]
        finished = self.pool.submit(self.batch, jobs)
        self.in_flight += len(jobs)
        self.batch = []
        self.batch_bytes = 0
        for batch, outcomes in finished:
            self.finish_batch(batch, outcomes)
        self.maybe_report_progress()

    def finish_batch(self, batch: object, outcomes: list[Outcome]) -> None:
        assert isinstance(batch, list)
        self.in_flight -= len(batch)
        for (path, st), outcome in zip(batch, outcomes, strict=True):
            self.finish_file(path, st, outcome)

    def finish_file(self, path: bytes, st: os.stat_result, outcome: Outcome) -> None:
        if isinstance(outcome, int):
            self.errors += 1
            self.add(_regular(path, st, b"", EntryError(outcome)))
            return
        self.hashed += 1
        self.bytes += st.st_size
        leaf = self.add(_regular(path, st, outcome))
        if self.cache is not None and max(st.st_mtime_ns, st.st_ctime_ns) < self.racy_after:
            # A file touched while we scanned is not cached: it is re-hashed next time.
            self.new_records[path] = (stamp_of(st), outcome, leaf)

    def finish(self) -> list[Entry]:
        """Collect every outstanding digest and return the entries sorted by path."""
        if self.pool is not None:
            try:
                self.submit()
                for batch, outcomes in self.pool.drain():
                    self.finish_batch(batch, outcomes)
            finally:
                self.pool.close()
        if self.cache is not None:
            self.cache.replace_records(self.new_records, leaf_signature=self.signature)
        self.entries.sort(key=_path_of)
        self.report_progress()
        return self.entries

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def seen(self) -> int:
        """Objects found so far: recorded, or regular files waiting for their digest."""
        return len(self.entries) + self.in_flight + len(self.batch)

    def maybe_report_progress(self) -> None:
        if self.seen() >= self.next_progress:
            self.report_progress()

    def report_progress(self) -> None:
        seen = self.seen()
        self.next_progress = seen + _PROGRESS_EVERY
        if self.progress is not None:
            self.progress(seen, self.bytes)


def scan(
    root: str | bytes | os.PathLike[str],
    policy: Policy,
    *,
    cache: StatCache | None = None,
    full_rehash: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    read_budget: TokenBucket | None = None,
) -> ScanResult:
    """Walk ``root`` under ``policy`` and return every entry, sorted by path.

    Paths in entries are absolute inside ``root`` (``b"/etc/hostname"``). With a
    ``cache``, files whose stat stamp is unchanged are not re-hashed unless
    ``full_rehash``; after the scan the cache holds exactly the regular files
    seen. ``workers`` is the number of hashing processes (default: one per CPU;
    0 hashes in this process). ``read_budget`` limits how fast file content is
    read. Raises NotADirectoryError when ``root`` is not a directory; an
    exception from ``progress`` abandons the scan (and leaves the cache as it was).
    """
    started = time.monotonic()
    base = os.fsencode(root).rstrip(b"/")
    if not os.path.isdir(base or b"/"):
        raise NotADirectoryError(f"scan root {os.fsdecode(base or b'/')} is not a directory")
    state = _Scan(
        base,
        policy,
        cache=cache,
        full_rehash=full_rehash,
        progress=progress,
        workers=default_workers() if workers is None else workers,
        read_budget=read_budget,
    )
    # A scan allocates a tuple per object and frees nothing until it ends, which
    # makes the cyclic garbage collector re-examine the growing entry list again
    # and again (a tenth of a rescan's time). It creates no cycles, so the
    # collector is paused for its duration.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for rel in include_roots(policy):
            device = None
            if policy.one_filesystem:
                try:
                    device = os.lstat(base + rel).st_dev
                except OSError:
                    continue
            state.walk(rel, device)
        entries = state.finish()
    except BaseException:
        state.abort()
        raise
    finally:
        if collecting:
            gc.enable()
    return ScanResult(
        entries=entries,
        files_hashed=state.hashed,
        files_cached=state.cached,
        bytes_hashed=state.bytes,
        errors=state.errors,
        seconds=time.monotonic() - started,
        _leaves=state.leaves,
    )
