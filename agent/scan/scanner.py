"""Scan a root: walk it without following symlinks and record one Entry per object.

The scanner is read-only. It never opens FIFOs, sockets or device nodes, never
follows a symlink, and records a file that vanishes or cannot be read mid-scan
with an error instead of failing. A :class:`StatCache` lets a rescan skip
hashing files whose (inode, size, mtime_ns, ctime_ns) did not change, and
reading symlinks whose stamp did not change.

How it is fast: the calling process walks the tree (``scandir`` + ``lstat``,
an explicit stack, so depth is unbounded) and hands regular files in batches
to forked hashing processes (:mod:`agent.scan.hashing`), collecting finished
batches as it goes. Entries are plain tuples, sorted once at the end. With a
cache, the scan also keeps each entry's leaf hash (cached for every unchanged
object), so a rescan re-encodes only what changed, and the root of a tree in
which nothing changed at all is the cached root. The result depends only on
the tree, never on the number of workers.
"""

from __future__ import annotations

import gc
import os
import stat
import time
from collections.abc import Iterator
from hashlib import sha256
from operator import itemgetter

from agent.manifest.format import Entry, EntryError, EntryType, leaf_hash
from agent.manifest.merkle import compute_root
from agent.manifest.policy import Policy
from agent.scan.entries import (
    NO_ERROR,
    REGULAR,
    TYPES,
    new_tuple,
    other_entry,
    regular_entry,
)
from agent.scan.hashing import FileJob, Listed, Outcome, hash_file
from agent.scan.hashpool import HashPool
from agent.scan.result import Progress, ScanResult
from agent.scan.rules import Exclusions, ignoring, include_roots, leaf_signature
from agent.scan.statcache import Record, StatCache, other_stamp_of, stamp_of
from agent.tokenbucket import TokenBucket

BATCH_FILES = 256
BATCH_BYTES = 16 << 20
_PROGRESS_EVERY = 1000

_path_of = itemgetter(0)  # Entry.path, as a C-level sort key
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_S_IFDIR = stat.S_IFDIR

_Pending = tuple[bytes, os.stat_result | None]
"""A regular file waiting for its digest: (path inside the root, its lstat if taken)."""


def default_workers() -> int:
    """One hashing process per CPU this process may run on."""
    return len(os.sched_getaffinity(0))


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
        # A cached leaf is reused as is only when the entry needs no stripping and was
        # hashed under the same policy; otherwise the cached digest still saves the read.
        self.reuse_leaves = (
            cache is not None and cache.leaf_signature == self.signature and self.strip is None
        )
        self.cached_root = cache.root if cache is not None and self.reuse_leaves else None
        self.reused = 0
        """Entries whose leaf came from ``old_records`` unchanged."""
        self.new_records: dict[bytes, Record] = {}
        self.leaves: list[bytes] | None = [] if cache is not None else None
        self.root: bytes | None = None
        self.racy_after = time.time_ns() - (cache.racy_window_ns if cache is not None else 0)
        self.progress = progress
        self.read_budget = read_budget
        self.pool = HashPool(workers) if workers > 0 else None
        self.batch_limit = BATCH_BYTES
        if read_budget is not None:  # smaller batches, so the budget paces evenly
            self.batch_limit = max(1, min(BATCH_BYTES, int(read_budget.burst)))
        # With nothing cached to compare against, a regular file's lstat would only
        # feed its entry: the hashing process takes its attributes instead.
        self.hash_unexamined = (
            self.pool is not None and read_budget is None and not self.old_records
        )
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
                self.record_unlistable(directory, dir_st, exc)
                continue
            self.record_other(directory, dir_st, EntryType.DIRECTORY)
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
        """Record the children of one directory; subdirectories go on ``stack``.

        This loop runs once per object in the tree. Its common case, a regular
        file unchanged since the last scan, is the fast path: the stamp from
        lstat matches the cache record, so the entry is built from the lstat and
        the cached digest, and the cached leaf and record are reused as they
        are. Everything else goes through the methods below.
        """
        prefix = directory + b"/" if directory != b"/" else b"/"
        excludes = self.policy.excludes if self.exclusions.may_exclude(directory) else None
        old_records = self.old_records.get
        new_records = self.new_records
        entries = self.entries.append
        add_leaf = (self.leaves if self.leaves is not None else []).append
        reuse = self.reuse_leaves
        unexamined = self.hash_unexamined
        push = stack.append
        reused = 0
        for child in listing:
            path = prefix + child.name
            if excludes is not None and excludes(path):
                continue
            if unexamined and child.is_file(follow_symlinks=False):
                self.record_listed_file(path)  # no cache to consult: no lstat needed
                continue
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                self.record_lost(path, child, exc)
                continue
            kind = st.st_mode & _S_IFMT
            if kind == _S_IFREG:
                cached = old_records(path)
                if (
                    reuse
                    and cached is not None
                    and cached[0] == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    and cached[2]
                ):  # the fast path
                    digest, leaf = cached[1], cached[2]
                    mode, uid, gid, size = st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size
                    fields = (path, REGULAR, mode, uid, gid, size, digest, b"", 0, 0, NO_ERROR)
                    entries(new_tuple(Entry, fields))  # one tuple, no NamedTuple.__new__ frame
                    add_leaf(leaf)
                    new_records[path] = cached
                    reused += 1
                else:
                    self.record_regular(path, st, cached)
            elif kind == _S_IFDIR and (device is None or st.st_dev == device):
                push((path, st))  # recorded when listed, with any listing error
            else:
                self.record(path, st, device, stack)
        self.cached += reused
        self.reused += reused

    def record_unlistable(self, directory: bytes, st: os.stat_result, exc: OSError) -> None:
        """A directory that vanished or cannot be listed since its parent was."""
        gone = isinstance(exc, FileNotFoundError | NotADirectoryError)
        self.errors += 1
        error = EntryError.VANISHED if gone else EntryError.UNREADABLE
        self.add(other_entry(directory, st, EntryType.DIRECTORY, error=error))

    def record(
        self,
        path: bytes,
        st: os.stat_result,
        device: int | None,
        stack: list[tuple[bytes, os.stat_result]],
    ) -> None:
        """Record any object but a directory to enter, which goes on ``stack``."""
        kind = TYPES.get(stat.S_IFMT(st.st_mode), EntryType.SOCKET)
        if kind is EntryType.REGULAR:
            self.record_regular(path, st, self.old_records.get(path))
        elif kind is EntryType.DIRECTORY and (device is None or st.st_dev == device):
            stack.append((path, st))  # recorded when listed, with any listing error
        else:
            self.record_other(path, st, kind)  # a mount point is recorded, not entered

    def record_regular(self, path: bytes, st: os.stat_result, cached: Record | None) -> None:
        """A regular file off the fast path: its cached digest if its stamp holds, else hash it."""
        if cached is None or cached[0] != stamp_of(st):
            self.record_file(path, st)
            return
        self.cached += 1
        if self.reuse_leaves and cached[2]:
            self.add_reused(regular_entry(path, st, cached[1]), cached[2])
            self.new_records[path] = cached
            return
        leaf = self.add(regular_entry(path, st, cached[1]))
        self.new_records[path] = (cached[0], cached[1], leaf)

    def record_other(self, path: bytes, st: os.stat_result, kind: EntryType) -> None:
        """Record a directory, symlink, device node, FIFO or socket (never opened).

        A symlink's target comes from the cache while its stamp holds, else from
        readlink; the cached leaf is reused as for a file.
        """
        stamp = other_stamp_of(st)
        cached = self.old_records.get(path)
        hit = cached is not None and cached[0] == stamp
        target = b""
        if kind is EntryType.SYMLINK:
            if cached is not None and hit:
                target = cached[1]
            else:
                try:
                    target = os.readlink(self.base + path)
                except OSError as exc:
                    self.errors += 1
                    gone = isinstance(exc, FileNotFoundError) or exc.errno == 22  # EINVAL
                    error = EntryError.VANISHED if gone else EntryError.UNREADABLE
                    self.add(other_entry(path, st, kind, error=error))
                    return
            entry = other_entry(path, st, kind, sha256(target).digest(), target)
        else:
            entry = other_entry(path, st, kind)
        if cached is not None and hit and self.reuse_leaves and cached[2]:
            self.add_reused(entry, cached[2])
            self.new_records[path] = cached
            return
        leaf = self.add(entry)
        if self.cache is not None and max(st.st_mtime_ns, st.st_ctime_ns) < self.racy_after:
            self.new_records[path] = (stamp, target, leaf)

    def add_reused(self, entry: Entry, leaf: bytes) -> None:
        """Record an unchanged entry with its cached leaf (only when leaves are reused)."""
        assert self.leaves is not None
        self.entries.append(entry)
        self.leaves.append(leaf)
        self.reused += 1

    def record_lost(self, path: bytes, child: os.DirEntry[bytes], exc: OSError) -> None:
        """A listed name whose lstat failed: it vanished (or cannot be examined)."""
        self.errors += 1
        kind = EntryType.DIRECTORY if child.is_dir(follow_symlinks=False) else EntryType.REGULAR
        error = EntryError.VANISHED if isinstance(exc, FileNotFoundError) else EntryError.UNREADABLE
        self.add(Entry(path, kind, 0, 0, 0, error=error))

    def record_listed_file(self, path: bytes) -> None:
        """A regular file listed but not examined: its hashing process stats it."""
        self.batch.append((path, None))
        if len(self.batch) >= BATCH_FILES:
            self.submit()

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
        base = self.base
        jobs: list[FileJob | bytes] = [
            base + p if st is None else (base + p, st.st_ino, st.st_size) for p, st in self.batch
        ]
        finished = self.pool.submit(self.batch, jobs)
        self.in_flight += len(jobs)
        self.batch = []
        self.batch_bytes = 0
        for batch, outcomes in finished:
            self.finish_batch(batch, outcomes)
        self.maybe_report_progress()

    def finish_batch(self, batch: object, outcomes: list[Outcome | Listed]) -> None:
        assert isinstance(batch, list)
        self.in_flight -= len(batch)
        for (path, st), outcome in zip(batch, outcomes, strict=True):
            if st is not None:
                self.finish_file(path, st, outcome)  # type: ignore[arg-type]  # sent a FileJob
            else:
                self.finish_listed(path, outcome)  # type: ignore[arg-type]  # sent a path

    def finish_listed(self, path: bytes, listed: Listed) -> None:
        """A file hashed by :func:`hash_listed`: the entry takes the attributes it saw."""
        outcome, fields = listed
        if not fields:  # gone, or no longer a regular file
            self.errors += 1
            self.add(Entry(path, REGULAR, 0, 0, 0, error=EntryError.VANISHED))
            return
        mode, ino, uid, gid, size, mtime_ns, ctime_ns = fields
        if isinstance(outcome, int):
            self.errors += 1
            self.add(Entry(path, REGULAR, mode & 0o7777, uid, gid, size, error=EntryError(outcome)))
            return
        self.hashed += 1
        self.bytes += size
        entry = (path, REGULAR, mode & 0o7777, uid, gid, size, outcome, b"", 0, 0, NO_ERROR)
        leaf = self.add(new_tuple(Entry, entry))
        if self.cache is not None and max(mtime_ns, ctime_ns) < self.racy_after:
            self.new_records[path] = ((ino, size, mtime_ns, ctime_ns), outcome, leaf)

    def finish_file(self, path: bytes, st: os.stat_result, outcome: Outcome) -> None:
        if isinstance(outcome, int):
            self.errors += 1
            self.add(regular_entry(path, st, b"", EntryError(outcome)))
            return
        self.hashed += 1
        self.bytes += st.st_size
        leaf = self.add(regular_entry(path, st, outcome))
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
            assert self.leaves is not None
            unchanged = self.reused == len(self.entries) == len(self.old_records)
            if unchanged and self.cached_root is not None:
                # Every entry is the cached one and none was added or removed: the
                # cached root is the root over these very leaves.
                self.root = self.cached_root
            else:
                self.root = compute_root(self.leaves)
            complete = len(self.new_records) == len(self.entries)  # every entry is cached
            self.cache.replace_records(
                self.new_records,
                leaf_signature=self.signature,
                root=self.root if complete else None,
                changed=not (unchanged and self.cached_root is not None),
            )
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
    # collector is paused for its duration, and what it made then goes straight
    # to the oldest generation (freeze + unfreeze, unless the process froze
    # objects of its own) instead of being examined once more by the first
    # young collection after the scan.
    collecting = gc.isenabled()
    promote = collecting and gc.get_freeze_count() == 0
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
        if promote:
            gc.freeze()
            gc.unfreeze()
        if collecting:
            gc.enable()
    return ScanResult(
        entries=entries,
        files_hashed=state.hashed,
        files_cached=state.cached,
        bytes_hashed=state.bytes,
        errors=state.errors,
        seconds=time.monotonic() - started,
        _root=state.root,
    )
