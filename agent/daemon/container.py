"""Watch a container: check its overlay upper directory each round, its merged root now and then.

``corral-agent run --container ID --engine unix:///...`` asks the engine for
the container's ``MergedDir`` (the root the agent reports on) and, on
overlay, its ``UpperDir``. Each round is then an :class:`UpperDirCheck`:

1. read the upper directory (:mod:`agent.daemon.upperdir`): the paths present there,
   the whiteouts and the opaque directories;
2. the affected paths are those, plus the baked entries below each whiteout
   and each opaque directory; each is examined in the *merged* root (lstat,
   readlink, content hashed unless its stat stamp is unchanged since the last
   round), which is what a scan would record for it;
   (a file touched within the stat cache's racy window is hashed again);
3. their old leaves (from the baked manifest) and new leaves go into the
   baked manifest's Merkle index (:class:`agent.manifest.merkle.RootIndex`), which
   re-hashes only the touched buckets: that is the root a full scan would
   compute; the index is put back afterwards;
4. when the root differs from the baseline, the evidence is the diff of the
   baked and live entries at the affected paths, bounded as a scan's is.

The cost follows the size of the upper directory (what the container
changed), not the image. What the upper directory cannot show, changes made
from the host to the image's lower layers, the full scan of the merged root
catches: it runs (in a child process, as for any root) on the schedule
``container_full_scan_interval`` sets, and on the first round. Without an
upper directory (a storage driver other than overlay, or a directory renamed
with overlay's ``redirect_dir``), every round is a full scan: said once in the
log and counted in ``corral_agent_container_fallback_total``.

The baked manifest's entries and Merkle index stay in memory between rounds
(about 50 MB for 100,000 entries).
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter

from agent.daemon.engine import ContainerStorage
from agent.daemon.ports import Scanner
from agent.daemon.report import bound_evidence
from agent.daemon.scanjob import ScanOutcome, ScanRequest
from agent.daemon.upperdir import UpperChanges, read_upper
from agent.errors import AgentError
from agent.manifest.diff import diff
from agent.manifest.format import Entry, EntryError, EntryType, leaf_hash, read_manifest
from agent.manifest.merkle import RootIndex
from agent.manifest.policy import Policy
from agent.scan.entries import entry_from_stat
from agent.scan.hashing import hash_file
from agent.scan.rules import ignoring
from agent.scan.statcache import RACY_WINDOW_NS, Stamp, stamp_of

log = logging.getLogger(__name__)

_Stamp = Stamp


@dataclass
class _Baseline:
    entries: list[Entry]
    paths: list[bytes]
    index: RootIndex
    root: bytes

    @classmethod
    def load(cls, manifest_path: str) -> _Baseline:
        manifest, _ = read_manifest(manifest_path)
        entries = list(manifest.entries)
        return cls(
            entries=entries,
            paths=[entry.path for entry in entries],
            index=RootIndex(leaf_hash(entry) for entry in entries),
            root=manifest.root,
        )

    def get(self, path: bytes) -> Entry | None:
        at = bisect.bisect_left(self.paths, path)
        if at < len(self.paths) and self.paths[at] == path:
            return self.entries[at]
        return None

    def below(self, path: bytes) -> Iterator[Entry]:
        """The baked entries strictly below directory ``path``."""
        prefix = b"/" if path == b"/" else path + b"/"
        at = bisect.bisect_left(self.paths, prefix)
        while at < len(self.paths) and self.paths[at].startswith(prefix):
            if self.paths[at] != b"/":
                yield self.entries[at]
            at += 1


class UpperDirCheck:
    """One container's check by its upper directory; keeps the baseline and digests warm."""

    def __init__(
        self,
        *,
        merged_dir: str,
        upper_dir: str,
        policy: Policy,
        racy_window_ns: int = RACY_WINDOW_NS,
    ) -> None:
        self._merged = os.fsencode(merged_dir).rstrip(b"/")
        self._racy_window_ns = racy_window_ns
        self._racy_after = 0
        self._upper = upper_dir
        self._policy = policy
        self._strip = ignoring(policy)
        self._baseline: _Baseline | None = None
        self._baseline_path: str | None = None
        self._digests: dict[bytes, tuple[_Stamp, bytes]] = {}

    def _load(self, manifest_path: str) -> _Baseline:
        if self._baseline is None or self._baseline_path != manifest_path:
            self._baseline = _Baseline.load(manifest_path)
            self._baseline_path = manifest_path
        return self._baseline

    def run(self, request: ScanRequest) -> ScanOutcome | None:
        """The outcome a scan of the merged root would give; None when only a scan can tell.

        Raises OSError when the upper directory cannot be read, AgentError when
        the baked manifest cannot.
        """
        started = time.monotonic()
        self._racy_after = time.time_ns() - self._racy_window_ns
        changes = read_upper(self._upper, self._policy)
        if changes.redirected:
            return None
        baseline = self._load(request.manifest_path)
        counters = _Counters()
        live = self._affected(baseline, changes, counters)
        old_leaves: list[bytes] = []
        new_leaves: list[bytes] = []
        old_entries: list[Entry] = []
        new_entries: list[Entry] = []
        for path, now in live.items():
            before = baseline.get(path)
            if before == now:
                continue
            if before is not None:
                old_entries.append(before)
                old_leaves.append(leaf_hash(before))
            if now is not None:
                new_entries.append(now)
                new_leaves.append(leaf_hash(now))
        index = baseline.index
        index.replace(remove=old_leaves, add=new_leaves)
        try:
            root = index.root()
        finally:
            index.replace(remove=new_leaves, add=old_leaves)
        evidence = None
        if root != request.baseline_root:
            old_entries.sort(key=_path)
            new_entries.sort(key=_path)
            evidence = bound_evidence(
                diff(old_entries, new_entries),
                max_changes=request.max_changes,
                max_bytes=request.max_evidence_bytes,
            )
        return ScanOutcome(
            root=root,
            entry_count=len(baseline.entries) - len(old_entries) + len(new_entries),
            files_hashed=counters.hashed,
            files_cached=counters.cached,
            bytes_hashed=counters.bytes,
            errors=counters.errors,
            seconds=time.monotonic() - started,
            evidence=evidence,
        )

    def _affected(
        self, baseline: _Baseline, changes: UpperChanges, counters: _Counters
    ) -> dict[bytes, Entry | None]:
        """Every path whose entry may differ from the baked one, with its live entry (or None)."""
        live: dict[bytes, Entry | None] = {}
        for path in changes.removed:
            if baseline.get(path) is not None:
                live[path] = None
            for entry in baseline.below(path):
                live[entry.path] = None
        for directory in changes.opaque:
            for entry in baseline.below(directory):
                live[entry.path] = None
        digests: dict[bytes, tuple[_Stamp, bytes]] = {}
        for path in changes.present:
            live[path] = self._examine(path, digests, counters)
        self._digests = digests
        return live

    def _examine(
        self, path: bytes, digests: dict[bytes, tuple[_Stamp, bytes]], counters: _Counters
    ) -> Entry | None:
        """The entry a scan of the merged root records for ``path`` (None: it is gone)."""
        full = self._merged + path if path != b"/" else self._merged or b"/"
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None
        except OSError:
            counters.errors += 1
            return Entry(path, EntryType.REGULAR, 0, 0, 0, error=EntryError.UNREADABLE)
        kind = stat.S_IFMT(st.st_mode)
        entry: Entry | None
        if kind == stat.S_IFSOCK:  # recorded by a scan, though an image never has one
            entry = Entry(path, EntryType.SOCKET, st.st_mode & 0o7777, st.st_uid, st.st_gid)
        elif kind == stat.S_IFREG:
            entry = self._regular(path, full, st, digests, counters)
        elif kind == stat.S_IFLNK:
            try:
                target = os.readlink(full)
            except OSError:
                return None
            entry = entry_from_stat(path, st, target=target)
        else:
            entry = entry_from_stat(path, st)
        if entry is None:
            return None
        return entry if self._strip is None else self._strip(entry)

    def _regular(
        self,
        path: bytes,
        full: bytes,
        st: os.stat_result,
        digests: dict[bytes, tuple[_Stamp, bytes]],
        counters: _Counters,
    ) -> Entry:
        stamp = stamp_of(st)
        cached = self._digests.get(path)
        if cached is not None and cached[0] == stamp:
            counters.cached += 1
            digests[path] = cached
            digest = cached[1]
        else:
            outcome = hash_file(full, st.st_ino, st.st_size)
            if isinstance(outcome, int):
                counters.errors += 1
                mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
                return Entry(path, EntryType.REGULAR, mode, uid, gid, st.st_size,
                             error=EntryError(outcome))  # fmt: skip
            counters.hashed += 1
            counters.bytes += st.st_size
            digest = outcome
            # As in the stat cache: a file touched just now may change again within
            # its timestamps' granularity, so its digest is not trusted next time.
            if max(st.st_mtime_ns, st.st_ctime_ns) < self._racy_after:
                digests[path] = (stamp, digest)
        entry = entry_from_stat(path, st, digest=digest)
        assert entry is not None
        return entry


@dataclass
class _Counters:
    hashed: int = 0
    cached: int = 0
    bytes: int = 0
    errors: int = 0


def _path(entry: Entry) -> bytes:
    return entry.path


class ContainerScanner:
    """The agent's scanner for a container: upper-directory checks, full scans when due.

    A round the runner marks as a full rehash (the first one, then every
    ``container_full_scan_interval``) goes to ``inner``, the ordinary scanner
    of the merged root; the others are :class:`UpperDirCheck` rounds.
    """

    def __init__(
        self,
        *,
        inner: Scanner,
        storage: ContainerStorage,
        policy: Policy,
        fallbacks: Counter,
    ) -> None:
        self._inner = inner
        self._storage = storage
        self._fallbacks = fallbacks
        self._check: UpperDirCheck | None = None
        self._warned: set[str] = set()
        if storage.upper_dir and storage.merged_dir:
            self._check = UpperDirCheck(
                merged_dir=storage.merged_dir, upper_dir=storage.upper_dir, policy=policy
            )
        else:
            self._fall_back(
                "no_upper_dir",
                f"container {storage.container_id[:12]} on storage driver "
                f"{storage.driver or 'unknown'} has no overlay upper directory: every check "
                "is a full scan of its merged root",
            )

    def _fall_back(self, reason: str, message: str) -> None:
        self._fallbacks.labels(reason=reason).inc()
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("%s", message)

    def has_cache(self) -> bool:
        return self._inner.has_cache()

    def run(self, request: ScanRequest) -> ScanOutcome:
        if request.full_rehash:
            return self._inner.run(request)
        if self._check is None:
            self._fallbacks.labels(reason="no_upper_dir").inc()
            return self._inner.run(request)
        outcome = self._check.run(request)
        if outcome is None:
            self._fall_back(
                "redirect_dir",
                f"container {self._storage.container_id[:12]} has a directory renamed with "
                "overlay redirect_dir: checking it by full scans of the merged root",
            )
            return self._inner.run(request)
        return outcome

    def stop(self) -> None:
        self._inner.stop()


def attach(storage: ContainerStorage) -> str:
    """The root to watch for ``storage``: its merged directory. AgentError when there is none."""
    if not storage.merged_dir:
        raise AgentError(
            f"container {storage.container_id[:12]} has no merged root on the host "
            f"(driver {storage.driver or 'unknown'}; is it running?)"
        )
    if not storage.running:
        raise AgentError(f"container {storage.container_id[:12]} is not running")
    return storage.merged_dir
