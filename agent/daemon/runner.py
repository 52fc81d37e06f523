"""The agent's loop: scan the root, compare with the baseline, report, retry.

Each tick asks the scanner port (:mod:`agent.daemon.scanjob`: by default a child
process, so the agent itself stays small) to scan the root, incrementally
with the stat cache warm and now and then with a full rehash, and to compare
the root with the baked baseline root:

- equal → a header-only report (constant size);
- different → a drift report with the changes against the baked manifest,
  bounded (:func:`agent.daemon.report.bound_evidence`).

Reports go through the :class:`~agent.daemon.outbox.Outbox` and are delivered oldest
first; a retryable failure (see :mod:`agent.daemon.transport` for which codes are)
keeps the report, on disk from then on (:meth:`Outbox.keep`), stops delivery
and arms the backoff; the scheduler calls :meth:`Runner.flush` again when it
has passed. A report the controller refused definitively is dropped (logged
once, counted by code). Reports kept on disk by an earlier run are queued
ahead of anything new when the runner is built. When the controller answers a
plain report with ``evidence_wanted``, a drift report for the same root follows.
The watched root is only ever read; the agent writes to its data dir only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.clock import Clock
from agent.daemon.backoff import Backoff
from agent.daemon.identity import ImageIdentity
from agent.daemon.metrics import AgentMetrics
from agent.daemon.outbox import Outbox
from agent.daemon.ports import Scanner, Transport
from agent.daemon.report import PendingReport
from agent.daemon.scanjob import ScanOutcome, ScanRequest
from agent.daemon.sequence import SequenceNumbers
from agent.errors import AgentError, ReportRejectedError, RetryableError
from agent.manifest.report import Evidence, Footprint, Report
from agent.scan.pacing import ScanStoppedError

log = logging.getLogger(__name__)

#: Retryable codes that mean the controller was not reached (or not in time).
_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class Schedule:
    """How often to scan and when to re-hash everything."""

    interval: float
    jitter: float
    full_rehash_every: int | None = None
    full_rehash_interval: float | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds on evidence size and on what a scan may cost."""

    max_changes: int = 10_000
    max_evidence_bytes: int = 1 << 20
    read_budget: int = 0
    """Bytes per second a scan may read (0: unlimited)."""
    workers: int = 0
    """Hashing processes for a scan (0: hash in the scanning process)."""


@dataclass(frozen=True)
class Subject:
    """Who reports and about what: fixed for the agent's lifetime."""

    instance_id: str
    group: str
    boot_id: str
    agent_version: str
    image: ImageIdentity
    root: str
    manifest_path: str


def full_rehash_due(
    schedule: Schedule, *, scans_since_full: int | None, seconds_since_full: float | None
) -> bool:
    """Whether the next scan re-hashes every file (``None``: no full scan yet)."""
    if scans_since_full is None or seconds_since_full is None:
        return True
    if schedule.full_rehash_every is not None:
        return scans_since_full + 1 >= schedule.full_rehash_every
    if schedule.full_rehash_interval is not None:
        return seconds_since_full >= schedule.full_rehash_interval
    return False


class Runner:
    """One agent's scan → report → deliver cycle, driven by a scheduler or a test."""

    def __init__(
        self,
        *,
        subject: Subject,
        schedule: Schedule,
        limits: Limits,
        scanner: Scanner,
        transport: Transport,
        outbox: Outbox,
        sequence: SequenceNumbers,
        backoff: Backoff,
        metrics: AgentMetrics,
        footprint: Callable[[], Footprint],
        clock: Clock = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.subject = subject
        self._schedule = schedule
        self._limits = limits
        self._scanner = scanner
        self._transport = transport
        self.outbox = outbox
        self._sequence = sequence
        self._backoff = backoff
        self._metrics = metrics
        self._footprint = footprint
        self._clock = clock
        self._monotonic = monotonic
        self._stop_event = threading.Event()
        self._sleep: Callable[[float], None] = sleep or self._wait
        self._stopping = False
        #: Reports the controller refused since start (``--once`` exits non-zero on any).
        self.refused = 0
        self._scans_since_full: int | None = None
        self._last_full: float | None = None
        if scanner.has_cache():
            # A cache kept from the last run is trusted: the full-rehash clock starts now.
            self._scans_since_full, self._last_full = 0, monotonic()
        self._restore()

    def _restore(self) -> None:
        """Queue the reports an earlier run kept on disk (they go first)."""
        for dropped in self.outbox.restore():
            self._count_dropped(dropped)
        if self.outbox:
            drift = sum(1 for report in self.outbox.items() if report.is_drift)
            log.info(
                "delivering reports kept by the last run",
                extra={"reports": len(self.outbox), "drift_reports": drift},
            )
        self._metrics.buffered_reports.set(len(self.outbox))

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the agent is told to stop."""
        self._stop_event.wait(seconds)

    def count_unexpected(self) -> None:
        """Count a failure the scheduler caught (a bug, logged by the caller)."""
        self._metrics.errors.labels(reason="unexpected").inc()

    def stop(self) -> None:
        """Stop: abandon a scan in progress, cancel a delivery in flight, deliver nothing more.

        A cancelled delivery keeps its report; call :meth:`persist` once the
        scheduler has stopped to write what is queued.
        """
        self._stopping = True
        self._stop_event.set()
        self._scanner.stop()
        self._transport.close()

    def persist(self) -> None:
        """Write every queued report to disk (at shutdown, after the last flush ended)."""
        if self.outbox:
            self.outbox.persist()
            log.info(
                "reports kept for the next start",
                extra={"reports": len(self.outbox), "path": self.outbox.path},
            )

    # -- scanning ---------------------------------------------------------------

    def _scan(self) -> ScanOutcome | None:
        started = self._monotonic()
        since = None if self._last_full is None else started - self._last_full
        full = full_rehash_due(
            self._schedule, scans_since_full=self._scans_since_full, seconds_since_full=since
        )
        request = ScanRequest(
            root=self.subject.root,
            policy=self.subject.image.policy,
            full_rehash=full,
            baseline_root=self.subject.image.root,
            manifest_path=self.subject.manifest_path,
            max_changes=self._limits.max_changes,
            max_evidence_bytes=self._limits.max_evidence_bytes,
            workers=self._limits.workers,
            read_budget=self._limits.read_budget,
        )
        try:
            outcome = self._scanner.run(request)
        except ScanStoppedError:
            log.info("scan abandoned: stopping")
            return None
        except (AgentError, OSError) as exc:
            self._metrics.errors.labels(reason="scan_failed").inc()
            log.error("scan of %s failed: %s", self.subject.root, exc)
            return None
        mode = "full" if full else "incremental"
        self._metrics.scan_duration.labels(mode=mode).observe(outcome.seconds)
        self._metrics.bytes_hashed.inc(outcome.bytes_hashed)
        self._metrics.files_hashed.inc(outcome.files_hashed)
        self._metrics.scan_errors.inc(outcome.errors)
        if outcome.evidence_problem is not None:
            self._metrics.errors.labels(reason="evidence_unavailable").inc()
            log.error("%s", outcome.evidence_problem)
        if outcome.cache_problem is not None:
            self._metrics.errors.labels(reason="state_write_failed").inc()
            log.warning("%s", outcome.cache_problem)
        if full:
            self._scans_since_full, self._last_full = 0, started
        else:
            self._scans_since_full = (self._scans_since_full or 0) + 1
        log.info(
            "scan done",
            extra={
                "mode": mode,
                "entries": outcome.entry_count,
                "files_hashed": outcome.files_hashed,
                "bytes_hashed": outcome.bytes_hashed,
                "scan_errors": outcome.errors,
                "seconds": round(outcome.seconds, 3),
            },
        )
        return outcome

    def _header(self, root: bytes, scanned_at_ms: int) -> Report:
        image = self.subject.image
        return Report(
            instance_id=self.subject.instance_id,
            group=self.subject.group,
            image_ref=image.image_ref,
            image_digest=image.image_digest,
            root=root,
            seq=self._sequence.next(),
            boot_id=self.subject.boot_id,
            scanned_at_ms=scanned_at_ms,
            footprint=self._footprint(),
            agent_version=self.subject.agent_version,
        )

    def scan_once(
        self, *, observe: Callable[[ScanOutcome], None] | None = None
    ) -> PendingReport | None:
        """Scan and queue the report (delivery is :meth:`flush`'s job).

        ``observe`` sees the outcome first (watch mode seeds its live root with it).
        """
        outcome = self._scan()
        if outcome is None:
            return None
        if observe is not None:
            observe(outcome)
        return self.report_root(outcome.root, outcome.evidence)

    def report_root(self, root: bytes, evidence: Evidence | None) -> PendingReport:
        """Queue a report of ``root`` as it is now, with ``evidence`` when it drifted."""
        scanned_at_ms = int(self._clock() * 1000)
        self._metrics.drift.set(0 if evidence is None else 1)
        report = PendingReport(self._header(root, scanned_at_ms), evidence)
        if evidence is not None:
            log.warning(
                "root differs from the image's baseline",
                extra={"changes": evidence.total_changes, "truncated": evidence.truncated},
            )
        self._enqueue(report)
        return report

    def _enqueue(self, report: PendingReport) -> None:
        if self._backoff.failures:
            self._metrics.reports.labels(result="buffered").inc()  # the controller is away
        for dropped in self.outbox.push(report):
            self._count_dropped(dropped)
        self._metrics.buffered_reports.set(len(self.outbox))

    def _count_dropped(self, dropped: PendingReport) -> None:
        self._metrics.reports.labels(result="dropped").inc()
        log.warning(
            "outbox full: dropped a buffered report",
            extra={"seq": dropped.header.seq, "drift": dropped.is_drift},
        )

    # -- delivery -----------------------------------------------------------------

    def flush(self) -> float | None:
        """Deliver buffered reports in order; returns the retry delay if one failed."""
        while self.outbox and not self._stopping:
            if not self._backoff.ready():
                return None
            report = self.outbox.peek()
            assert report is not None
            started = self._monotonic()
            try:
                delivery = self._transport.deliver(report)
            except RetryableError as exc:
                self._metrics.report_duration.observe(self._monotonic() - started)
                self._metrics.report_failures.labels(code=exc.code).inc()
                self.outbox.keep()
                delay = self._backoff.failure(at_least=exc.delay)
                if self._backoff.failures == 1:  # these were queued while all seemed well
                    self._metrics.reports.labels(result="buffered").inc(len(self.outbox))
                log.warning(
                    "%s; reports kept for a retry",
                    "controller unreachable"
                    if exc.code in _UNREACHABLE
                    else "controller failed the call",
                    extra={
                        "error": str(exc),
                        "code": exc.code,
                        "reports": len(self.outbox),
                        "retry_in": round(delay, 3),
                    },
                )
                return delay
            except ReportRejectedError as exc:
                self._metrics.report_duration.observe(self._monotonic() - started)
                self._metrics.report_failures.labels(code=exc.code).inc()
                self.outbox.pop()
                self.refused += 1
                self._metrics.reports.labels(result="rejected").inc()
                log.error(
                    "controller refused a report; dropped: %s",
                    exc,
                    extra={"code": exc.code, "seq": report.header.seq, "drift": report.is_drift},
                )
                continue
            self._metrics.report_duration.observe(self._monotonic() - started)
            self.outbox.pop()
            self._backoff.success()
            self._metrics.reports.labels(result="delivered").inc()
            self._metrics.last_report_timestamp.set(self._clock())
            if delivery.evidence_wanted and not report.is_drift:
                self._send_evidence_for(report)
            self._metrics.buffered_reports.set(len(self.outbox))
        self._metrics.buffered_reports.set(len(self.outbox))
        return None

    def _send_evidence_for(self, report: PendingReport) -> None:
        """Queue a drift report for a root the controller asked evidence about.

        A plain report is only sent when the root equals the baseline, so the
        changes against the baseline are none: the evidence is empty, and the
        controller can tell that its registered manifest and this agent's
        baseline disagree.
        """
        log.info("controller asked for evidence", extra={"seq": report.header.seq})
        header = self._header(report.header.root, report.header.scanned_at_ms)
        self._enqueue(PendingReport(header, Evidence(changes=(), truncated=False, total_changes=0)))

    def tick(self) -> float | None:
        """One scheduled round: scan, queue, deliver. Returns a retry delay or None."""
        self.scan_once()
        return self.flush()

    def drain(self, *, attempts: int) -> bool:
        """Deliver everything buffered, waiting out backoffs; True when the outbox empties."""
        for _ in range(attempts):
            wait = self._backoff.remaining()
            if wait > 0:
                self._sleep(wait)
            self.flush()
            if not self.outbox:
                return True
            if self._stopping:
                return False
        return not self.outbox
