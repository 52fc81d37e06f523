"""Watch mode: drift reported within a second of the write, at almost no idle cost.

Three parts, wired by the daemon:

- an **event thread** blocks on the inotify descriptor (:mod:`agent.daemon.watch.inotify`); when
  events come it keeps reading until the tree has been quiet for ``QUIET``
  seconds (at most ``MAX_HOLD`` after the first event), so a burst of changes
  becomes one batch, then hands the batch to the scheduler's single worker;
- a **batch** (:meth:`WatchMode.process`, on that worker, so never at the same
  time as a scan) rescans only the touched paths (:mod:`agent.daemon.watch.touched`),
  applies them to the live root (:mod:`agent.daemon.watch.liveroot`) and, when the root
  moved, queues a report with the evidence and delivers it at once;
- the **tick** (:meth:`WatchMode.tick`, every ``interval``) sends the live root
  as a heartbeat without scanning. It scans instead, as the safety net, every
  ``scan_interval`` seconds, at start (changes made while the agent was down),
  after an event queue overflow, and on every tick while part of the tree is
  unwatched or the live state gave up (too many changes, or a failed event thread).

A scan seeds the live root from its complete evidence and checks that the two
roots agree; events that came during the scan are processed after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.daemon.config import AgentConfig
from agent.daemon.metrics import AgentMetrics
from agent.daemon.runner import Runner
from agent.daemon.scanjob import ScanOutcome
from agent.daemon.watch.inotify import Touch, TreeWatcher, WatchUnavailableError
from agent.daemon.watch.liveroot import MAX_TRACKED, LiveRoot, TooManyChangesError
from agent.daemon.watch.touched import rescan_touched
from agent.errors import AgentError
from agent.manifest.baseline import BaselineIndex
from agent.manifest.report import Evidence

log = logging.getLogger(__name__)

QUIET = 0.1
"""Seconds without events that end a batch."""
MAX_HOLD = 1.0
"""Longest a batch waits for the tree to go quiet, from its first event."""

Submit = Callable[[Callable[[], float | None]], None]
"""Runs a job on the scheduler's worker; the job returns a delivery retry delay or None."""


class WatchMode:
    """The live root kept by kernel events, between safety-net scans."""

    def __init__(
        self,
        *,
        runner: Runner,
        watcher: TreeWatcher,
        baseline: BaselineIndex,
        metrics: AgentMetrics,
        scan_interval: float,
        max_changes: int,
        max_evidence_bytes: int,
        max_pending: int = MAX_TRACKED,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self._watcher = watcher
        self._baseline = baseline
        self._metrics = metrics.watch
        self._errors = metrics.errors.labels(reason="watch_failed")
        self._scan_interval = scan_interval
        self._max_changes = max_changes
        self._max_evidence_bytes = max_evidence_bytes
        self._max_pending = max_pending
        self._monotonic = monotonic
        self._live: LiveRoot | None = None
        self._reported: bytes | None = None
        self._last_scan: float | None = None
        self._pending: dict[bytes, bool] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._alive = False

    # -- the event thread -------------------------------------------------------

    def start(self, submit: Submit) -> None:
        """Watch the whole tree, then start the event thread (the first tick scans)."""
        self._watcher.watch_all()
        self._show()
        self._alive = True
        self._metrics.active.set(1)
        self._thread = threading.Thread(
            target=self._events, args=(submit,), name="corral-watch", daemon=True
        )
        self._thread.start()
        log.info(
            "watch mode on",
            extra={"watched": self._watcher.watched, "unwatched": self._watcher.unwatched},
        )

    def _events(self, submit: Submit) -> None:
        try:
            while self._collect():
                submit(self.process)
        except Exception:  # the thread must not die silently: say so, fall back to scans
            self._metrics.active.set(0)
            self._errors.inc()
            log.exception("the watch thread failed; falling back to interval scans")
            self._alive = False

    def _collect(self) -> bool:
        """Wait for a batch of touches and add it to the pending set; False to stop."""
        touches = self._watcher.read(None)
        if touches is None:
            return False
        first = self._monotonic()
        while True:
            self._add(touches)
            left = min(QUIET, first + MAX_HOLD - self._monotonic())
            if left <= 0:
                return True
            touches = self._watcher.read(left)
            if touches is None:
                return False
            if not touches and not self._watcher.overflowed:
                return True

    def _add(self, touches: list[Touch]) -> None:
        self._metrics.events.inc(len(touches))
        with self._lock:
            for touch in touches:
                self._pending[touch.path] = self._pending.get(touch.path, False) or touch.subtree
            if len(self._pending) > self._max_pending:
                # More paths than are worth examining one by one (or holding): like a
                # kernel queue overflow, the next batch rewatches and rescans everything.
                self._pending.clear()
                self._watcher.overflowed = True

    def stop(self) -> None:
        self._watcher.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._metrics.active.set(0)

    def close(self) -> None:
        self._watcher.close()
        self._baseline.close()

    # -- on the scheduler's worker -------------------------------------------------

    def process(self) -> float | None:
        """Rescan the touched paths; report at once when the root moved."""
        if self._watcher.overflowed:
            self._metrics.full_rescans.labels(reason="overflow").inc()
            log.warning("inotify event queue overflowed: rewatching and rescanning everything")
            return self._scan()
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return None
        if self._live is None:
            return self._scan()  # no live state: a scan finds what changed
        touches = [Touch(path, subtree) for path, subtree in pending.items()]
        live = self._live
        try:
            changes = rescan_touched(
                touches,
                root=self._runner.subject.root,
                policy=self._runner.subject.image.policy,
                watcher=self._watcher,
                known_under=lambda directory: self._known_under(live, directory),
            )
            self._metrics.rescanned.inc(len(changes))
            self._show()
            live.apply(changes)
        except TooManyChangesError as exc:
            self._metrics.full_rescans.labels(reason="handover").inc()
            log.warning("%s", exc)
            self._live = None
            return self._scan()
        except Exception:  # the touched paths must not be lost: a scan finds them
            self._errors.inc()
            log.exception("rescanning the touched paths failed; scanning everything instead")
            self._live = None
            return self._scan()
        return self._report_if_moved()

    def _known_under(self, live: LiveRoot, directory: bytes) -> list[bytes]:
        return self._baseline.paths_under(directory) + live.changed_paths_under(directory)

    def _report_if_moved(self) -> float | None:
        assert self._live is not None
        root = self._live.root()
        if root == self._reported:
            return None
        self._reported = root
        self._runner.report_root(root, self._evidence(self._live))
        return self._runner.flush()

    def _evidence(self, live: LiveRoot) -> Evidence | None:
        return live.evidence(max_changes=self._max_changes, max_bytes=self._max_evidence_bytes)

    def tick(self) -> float | None:
        """Every interval: a heartbeat with the live root, or a safety-net scan."""
        now = self._monotonic()
        due = self._last_scan is None or now - self._last_scan >= self._scan_interval
        if self._watcher.unwatched:
            self._watcher.retry_unwatched()
            self._show()
        if due or self._live is None or self._watcher.unwatched or not self._alive:
            return self._scan()
        self._reported = self._live.root()
        self._runner.report_root(self._reported, self._evidence(self._live))
        return self._runner.flush()

    def _scan(self) -> float | None:
        if self._watcher.overflowed:
            self._watcher.overflowed = False
            self._watcher.watch_all()  # new directories whose events were lost: watch, then scan
            self._show()
        self._last_scan = self._monotonic()
        with self._lock:
            self._pending.clear()  # touched before the scan starts: the scan sees them
        report = self._runner.scan_once(observe=self._seed)
        if report is not None:
            self._reported = report.header.root
        return self._runner.flush()

    def _seed(self, outcome: ScanOutcome) -> None:
        """Start the live root from a scan: its complete evidence, checked against its root."""
        self._live = None
        evidence = outcome.evidence
        if evidence is not None and (evidence.truncated or outcome.evidence_problem):
            log.info("drift too large to track change by change: every event starts a scan")
            return
        live = LiveRoot(self._baseline)
        try:
            if evidence is not None:
                live.apply((change.path, change.entry) for change in evidence.changes)
        except (TooManyChangesError, AgentError) as exc:
            log.warning("live root not started: %s", exc)
            return
        if live.root() != outcome.root:
            self._errors.inc()
            log.error("the live root does not match the scan's root; every event starts a scan")
            return
        self._live = live

    def _show(self) -> None:
        self._metrics.show(watched=self._watcher.watched, unwatched=self._watcher.unwatched)


def start_watch_mode(
    config: AgentConfig, runner: Runner, metrics: AgentMetrics
) -> WatchMode | None:
    """Watch mode for ``config``, or None (said once, in the log) where it cannot run."""
    if config.once:
        return None
    metrics.watch.active.set(0)
    try:
        watcher = TreeWatcher(config.root, runner.subject.image.policy)
    except WatchUnavailableError as exc:
        log.warning("watch mode off: %s; changes are found by interval scans only", exc)
        return None
    try:
        baseline = BaselineIndex(config.manifest_path)
    except AgentError as exc:
        watcher.close()
        log.warning("watch mode off: %s; changes are found by interval scans only", exc)
        return None
    return WatchMode(
        runner=runner,
        watcher=watcher,
        baseline=baseline,
        metrics=metrics,
        scan_interval=config.watch_scan_interval,
        max_changes=config.max_changes,
        max_evidence_bytes=config.max_evidence_bytes,
    )
