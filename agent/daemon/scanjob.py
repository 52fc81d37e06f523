"""One scan and its comparison with the baseline, in a child process or in this one.

A scan of a large root builds every entry, the leaf hashes and the stat cache
in memory: for 100,000 files that is over 100 MB of Python objects, and
Python's allocator keeps much of it after the scan. So the agent's long-lived
process does not scan. Each round, :class:`SubprocessScanner` starts a
child Python running :func:`main`, which loads the stat cache from the data dir,
scans, computes the root, diffs against the baked manifest only when the root
differs, saves the cache and hands back a small :class:`ScanOutcome` (the root,
counters and bounded evidence). Between scans the agent is back at its import
floor. :class:`InProcessScanner` does the same work in-process (tests, tools).

The child inherits the agent's nice level and never writes inside the root.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import agent
from agent.daemon.report import bound_evidence
from agent.errors import AgentError
from agent.manifest.diff import diff
from agent.manifest.format import read_manifest
from agent.manifest.policy import Policy
from agent.manifest.report import Evidence
from agent.scan.pacing import ScanPacer, ScanStoppedError
from agent.scan.scanner import scan
from agent.scan.statcache import StatCache
from agent.tokenbucket import TokenBucket

# The child imports this module by name (not as __main__) so pickled classes match.
_CHILD = "import sys; from agent.daemon.scanjob import main; sys.exit(main(sys.argv[1:]))"


@dataclass(frozen=True)
class ScanRequest:
    """What to scan and what to compare it with."""

    root: str
    policy: Policy
    full_rehash: bool
    baseline_root: bytes
    manifest_path: str
    max_changes: int
    max_evidence_bytes: int
    workers: int = 0
    read_budget: int = 0


@dataclass(frozen=True)
class ScanOutcome:
    """What a scan found, small enough to pass between processes."""

    root: bytes
    entry_count: int
    files_hashed: int
    files_cached: int
    bytes_hashed: int
    errors: int
    seconds: float
    evidence: Evidence | None
    """The changes against the baseline when the root differs, else None."""
    evidence_problem: str | None = None
    """Why the evidence is missing (the baked manifest could not be read)."""
    cache_problem: str | None = None
    """Why the stat cache could not be saved."""


@dataclass(frozen=True)
class _Failure:
    message: str


def scan_and_compare(
    request: ScanRequest,
    *,
    cache: StatCache,
    progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ScanOutcome:
    """Scan ``request.root``; when its root is not the baseline's, diff and bound.

    Raises AgentError/OSError when the root cannot be scanned.
    """
    budget = None
    if request.read_budget:
        budget = TokenBucket(request.read_budget, clock=clock, sleep=sleep)
    result = scan(
        request.root,
        request.policy,
        cache=cache,
        full_rehash=request.full_rehash,
        progress=progress,
        workers=request.workers,
        read_budget=budget,
    )
    root = result.root
    evidence = None
    problem = None
    if root != request.baseline_root:
        try:
            baseline = read_manifest(request.manifest_path)[0].entries
        except AgentError as exc:
            problem = f"no drift evidence: {exc}"
            evidence = Evidence(changes=(), truncated=True, total_changes=0)
        else:
            evidence = bound_evidence(
                diff(baseline, result.entries),
                max_changes=request.max_changes,
                max_bytes=request.max_evidence_bytes,
            )
    return ScanOutcome(
        root=root,
        entry_count=len(result.entries),
        files_hashed=result.files_hashed,
        files_cached=result.files_cached,
        bytes_hashed=result.bytes_hashed,
        errors=result.errors,
        seconds=result.seconds,
        evidence=evidence,
        evidence_problem=problem,
    )


def _save(cache: StatCache, path: str, outcome: ScanOutcome) -> ScanOutcome:
    if not cache.changed and os.path.exists(path):
        return outcome
    try:
        cache.save(path)
    except OSError as exc:
        return replace(outcome, cache_problem=f"stat cache not saved to {path}: {exc.strerror}")
    return outcome


class InProcessScanner:
    """Scans in this process, keeping the stat cache in memory (and saving it if asked)."""

    def __init__(
        self,
        *,
        cache: StatCache | None = None,
        cache_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cache_path = cache_path
        if cache is None:
            cache = StatCache.load(cache_path) if cache_path else StatCache()
        self._cache = cache
        self._clock = clock
        self._sleep = sleep
        self._stopping = False

    def has_cache(self) -> bool:
        return len(self._cache) > 0

    def run(self, request: ScanRequest) -> ScanOutcome:
        pacer = ScanPacer(budget=0, should_stop=lambda: self._stopping)
        outcome = scan_and_compare(
            request, cache=self._cache, progress=pacer, sleep=self._sleep, clock=self._clock
        )
        if self._cache_path is None:
            return outcome
        return _save(self._cache, self._cache_path, outcome)

    def stop(self) -> None:
        self._stopping = True


class SubprocessScanner:
    """Runs each scan in a fresh child Python process; see the module doc."""

    def __init__(self, *, cache_path: str, python: str = sys.executable) -> None:
        self._cache_path = cache_path
        self._python = python
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def has_cache(self) -> bool:
        return os.path.exists(self._cache_path)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        home = os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
        return env

    def run(self, request: ScanRequest) -> ScanOutcome:
        with self._lock:
            if self._stopping:
                raise ScanStoppedError("scan not started: the agent is stopping")
            child = subprocess.Popen(
                [self._python, "-c", _CHILD, self._cache_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environment(),
            )
            self._child = child
        try:
            out, err = child.communicate(pickle.dumps(request))
        finally:
            with self._lock:
                self._child = None
        if self._stopping:
            raise ScanStoppedError("scan abandoned: the agent is stopping")
        if child.returncode != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise AgentError(f"scan process exited with {child.returncode}: {' | '.join(tail)}")
        result = pickle.loads(out)  # our own child, over a private pipe
        if isinstance(result, _Failure):
            raise AgentError(result.message)
        if not isinstance(result, ScanOutcome):
            raise AgentError(f"scan process answered {type(result).__name__}")
        return result

    def stop(self) -> None:
        """Stop any scan in progress (the cache file is only ever replaced atomically)."""
        with self._lock:
            self._stopping = True
            if self._child is not None and self._child.poll() is None:
                self._child.terminate()


def main(argv: list[str]) -> int:
    """The child: read a pickled ScanRequest on stdin, write the outcome on stdout."""
    [cache_path] = argv
    request = pickle.load(sys.stdin.buffer)
    cache = StatCache.load(cache_path)
    result: ScanOutcome | _Failure
    try:
        result = _save(cache, cache_path, scan_and_compare(request, cache=cache))
    except (AgentError, OSError) as exc:
        result = _Failure(f"scan of {request.root} failed: {exc}")
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()
    return 0
