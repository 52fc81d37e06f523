"""The agent's loop: scan the root, compare with the baseline, report, retry.

Each tick scans the root (incrementally, with the stat cache warm; now and
then a full rehash), computes the root and turns it into a report:

- root == the baked baseline root → a header-only report (constant size);
- otherwise → a drift report with the changes against the baked manifest,
  bounded (:func:`agent.report.bound_evidence`). The manifest is loaded only
  then and released after, so a conformant agent holds no baseline in memory.

Reports go through the :class:`~agent.outbox.Outbox` and are delivered oldest
first; a retryable failure stops delivery and arms the backoff, the scheduler
calls :meth:`Runner.flush` again when it has passed. A report the controller
refused is dropped (logged, counted). When the controller answers a plain
report with ``evidence_wanted``, a drift report for the same root follows.
The watched root is only ever read; the agent writes to its state dir only.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.backoff import Backoff
from agent.diff import diff
from agent.errors import AgentError, ReportRejectedError, RetryableError
from agent.identity import ImageIdentity
from agent.manifest import Entry, read_manifest
from agent.metrics import AgentMetrics
from agent.outbox import Outbox
from agent.pacing import ScanPacer, ScanStoppedError
from agent.ports import Clock, Transport
from agent.readbudget import TokenBucket
from agent.report import Evidence, Footprint, PendingReport, ReportHeader, bound_evidence
from agent.scan import ScanResult, StatCache, scan
from agent.sequence import SequenceNumbers

log = logging.getLogger(__name__)

Scanner = Callable[..., ScanResult]
BaselineLoader = Callable[[], Sequence[Entry]]


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
    """Hashing processes for a scan (0: hash in the agent's own process)."""


@dataclass(frozen=True)
class Subject:
    """Who reports and about what: fixed for the agent's lifetime."""

    instance_id: str
    group: str
    boot_id: str
    agent_version: str
    image: ImageIdentity
    root: str


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


def load_baseline(path: str) -> BaselineLoader:
    """A loader of the baked manifest's entries (read only when drift is found)."""

    def load() -> Sequence[Entry]:
        manifest, _ = read_manifest(path)
        return manifest.entries

    return load


def _accepts(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    if keyword in parameters:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class Runner:
    """One agent's scan → report → deliver cycle, driven by a scheduler or a test."""

    def __init__(
        self,
        *,
        subject: Subject,
        schedule: Schedule,
        limits: Limits,
        transport: Transport,
        outbox: Outbox,
        sequence: SequenceNumbers,
        backoff: Backoff,
        metrics: AgentMetrics,
        baseline: BaselineLoader,
        footprint: Callable[[], Footprint],
        clock: Clock = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        scanner: Scanner = scan,
        cache: StatCache | None = None,
        cache_path: str | None = None,
    ) -> None:
        self.subject = subject
        self._schedule = schedule
        self._limits = limits
        self._transport = transport
        self.outbox = outbox
        self._sequence = sequence
        self._backoff = backoff
        self._metrics = metrics
        self._baseline = baseline
        self._footprint = footprint
        self._clock = clock
        self._monotonic = monotonic
        self._stop_event = threading.Event()
        self._sleep: Callable[[float], None] = sleep or self._wait
        self._scanner = scanner
        self._cache_path = cache_path
        self._cache = cache if cache is not None else StatCache()
        self._scans_since_full: int | None = None
        self._last_full: float | None = None
        if len(self._cache):
            # A cache kept from the last run is trusted: the full-rehash clock starts now.
            self._scans_since_full, self._last_full = 0, monotonic()
        self._last_drift: tuple[bytes, Evidence] | None = None
        self._stopping = False
        self._scan_options: dict[str, Any] = {}
        if _accepts(scanner, "workers"):
            self._scan_options["workers"] = limits.workers
        self._pace_reads = limits.read_budget
        if limits.read_budget and _accepts(scanner, "read_budget"):
            # The scanner meters reads itself (before hashing); the pacer only stops scans.
            self._scan_options["read_budget"] = TokenBucket(
                limits.read_budget, clock=monotonic, sleep=self._sleep
            )
            self._pace_reads = 0

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the agent is told to stop."""
        self._stop_event.wait(seconds)

    def count_unexpected(self) -> None:
        """Count a failure the scheduler caught (a bug, logged by the caller)."""
        self._metrics.errors.labels(reason="unexpected").inc()

    def stop(self) -> None:
        """Ask a running scan to give up at its next progress call."""
        self._stopping = True
        self._stop_event.set()

    # -- scanning ---------------------------------------------------------------

    def _scan(self) -> ScanResult | None:
        started = self._monotonic()
        since = None if self._last_full is None else started - self._last_full
        full = full_rehash_due(
            self._schedule, scans_since_full=self._scans_since_full, seconds_since_full=since
        )
        pacer = ScanPacer(
            budget=self._pace_reads,
            should_stop=lambda: self._stopping,
            clock=self._monotonic,
            sleep=self._sleep,
        )
        try:
            result = self._scanner(
                self.subject.root,
                self.subject.image.policy,
                cache=self._cache,
                full_rehash=full,
                progress=pacer,
                **self._scan_options,
            )
        except ScanStoppedError:
            log.info("scan abandoned: stopping")
            return None
        except (AgentError, OSError) as exc:
            self._metrics.errors.labels(reason="scan_failed").inc()
            log.error("scan of %s failed: %s", self.subject.root, exc)
            return None
        mode = "full" if full else "incremental"
        self._metrics.scan_duration.labels(mode=mode).observe(result.seconds)
        self._metrics.bytes_hashed.inc(result.bytes_hashed)
        self._metrics.files_hashed.inc(result.files_hashed)
        self._metrics.scan_errors.inc(result.errors)
        if full:
            self._scans_since_full, self._last_full = 0, started
        else:
            self._scans_since_full = (self._scans_since_full or 0) + 1
        if result.files_hashed:
            self.save_cache()
        log.info(
            "scan done",
            extra={
                "mode": mode,
                "entries": len(result.entries),
                "files_hashed": result.files_hashed,
                "bytes_hashed": result.bytes_hashed,
                "scan_errors": result.errors,
                "seconds": round(result.seconds, 3),
            },
        )
        return result

    def _evidence(self, result: ScanResult) -> Evidence:
        if self._last_drift is not None and self._last_drift[0] == result.root:
            return self._last_drift[1]
        try:
            baseline = self._baseline()
        except AgentError as exc:
            self._metrics.errors.labels(reason="evidence_unavailable").inc()
            log.error("cannot load the baseline manifest for drift evidence: %s", exc)
            return Evidence(changes=(), truncated=True, total_changes=0)
        changes = diff(baseline, result.entries)
        del baseline
        evidence = bound_evidence(
            changes,
            max_changes=self._limits.max_changes,
            max_bytes=self._limits.max_evidence_bytes,
        )
        self._last_drift = (result.root, evidence)
        return evidence

    def _header(self, root: bytes, scanned_at_ms: int) -> ReportHeader:
        image = self.subject.image
        return ReportHeader(
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

    def scan_once(self) -> PendingReport | None:
        """Scan and queue the report (delivery is :meth:`flush`'s job)."""
        result = self._scan()
        if result is None:
            return None
        scanned_at_ms = int(self._clock() * 1000)
        drifted = result.root != self.subject.image.root
        self._metrics.drift.set(1 if drifted else 0)
        evidence = self._evidence(result) if drifted else None
        if not drifted:
            self._last_drift = None
        root = result.root
        del result  # the live entries are not needed past this point
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
            self._metrics.reports.labels(result="dropped").inc()
            log.warning(
                "outbox full: dropped a buffered report",
                extra={"seq": dropped.header.seq, "drift": dropped.is_drift},
            )
        self._metrics.buffered_reports.set(len(self.outbox))

    def save_cache(self) -> None:
        """Keep the stat cache in the state dir so a restart need not re-hash everything."""
        if self._cache_path is None:
            return
        try:
            self._cache.save(self._cache_path)
        except OSError as exc:
            self._metrics.errors.labels(reason="state_write_failed").inc()
            log.warning("cannot save the stat cache to %s: %s", self._cache_path, exc)

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
                delay = self._backoff.failure(at_least=exc.delay)
                if self._backoff.failures == 1:  # these were queued while all seemed well
                    self._metrics.reports.labels(result="buffered").inc(len(self.outbox))
                log.warning(
                    "controller unreachable; reports buffered",
                    extra={"error": str(exc), "retry_in": round(delay, 3)},
                )
                return delay
            except ReportRejectedError as exc:
                self._metrics.report_duration.observe(self._monotonic() - started)
                self.outbox.pop()
                self._metrics.reports.labels(result="rejected").inc()
                log.error("controller refused a report: %s", exc, extra={"code": exc.code})
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
