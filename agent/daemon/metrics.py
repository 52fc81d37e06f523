"""The agent's Prometheus metrics, on a registry the caller provides.

Names are the ones agreed for corral (``corral_agent_*``, base units, counters
ending in ``_total``) with bounded labels only: never the instance id, a path
or a digest (the scrape target's ``instance`` label says which host this is).
:func:`serve_metrics` exposes them, plus the process collector (RSS, CPU), on
``--metrics-listen``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

REPORT_RESULTS = ("delivered", "buffered", "dropped", "rejected")
SCAN_MODES = ("full", "incremental")
ERROR_REASONS = (
    "scan_failed",
    "state_write_failed",
    "evidence_unavailable",
    "outbox_damaged",
    "unexpected",
    "watch_failed",
)
WATCH_RESCANS = ("overflow", "handover")
CONTAINER_FALLBACK_REASONS = ("no_upper_dir", "redirect_dir")


class AgentMetrics:
    """Every metric the agent emits."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.scan_duration = Histogram(
            "corral_agent_scan_duration_seconds",
            "How long one scan of the root took.",
            ["mode"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=registry,
        )
        self.bytes_hashed = Counter(
            "corral_agent_bytes_hashed",
            "Bytes of file content read and hashed by scans.",
            registry=registry,
        )
        self.files_hashed = Counter(
            "corral_agent_files_hashed",
            "Files whose content was read and hashed (not served from the stat cache).",
            registry=registry,
        )
        self.scan_errors = Counter(
            "corral_agent_scan_errors",
            "Entries a scan could not record completely (vanished or unreadable).",
            registry=registry,
        )
        self.reports = Counter(
            "corral_agent_reports",
            "Reports by what became of them.",
            ["result"],
            registry=registry,
        )
        self.report_failures = Counter(
            "corral_agent_report_failures",
            "Calls to the controller that did not deliver a report, by gRPC status code.",
            ["code"],
            registry=registry,
        )
        self.report_duration = Histogram(
            "corral_agent_report_duration_seconds",
            "How long one call to the controller took, successful or not.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.buffered_reports = Gauge(
            "corral_agent_buffered_reports",
            "Reports waiting for the controller.",
            registry=registry,
        )
        self.last_report_timestamp = Gauge(
            "corral_agent_last_report_timestamp_seconds",
            "When the controller last accepted a report (Unix seconds).",
            registry=registry,
        )
        self.drift = Gauge(
            "corral_agent_drift",
            "1 when the last scan's root differs from the image's baseline root.",
            registry=registry,
        )
        self.errors = Counter(
            "corral_agent_errors",
            "Failures the agent survived, by reason.",
            ["reason"],
            registry=registry,
        )
        self.watch = WatchMetrics(registry)
        self.container_fallback = Counter(
            "corral_agent_container_fallback",
            "Container checks done by a full scan of the merged root because the overlay "
            "upper directory cannot tell (see agent.daemon.container), by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in CONTAINER_FALLBACK_REASONS:
            self.container_fallback.labels(reason=reason)
        for result in REPORT_RESULTS:
            self.reports.labels(result=result)
        for mode in SCAN_MODES:
            self.scan_duration.labels(mode=mode)
        for reason in ERROR_REASONS:
            self.errors.labels(reason=reason)


class WatchMetrics:
    """Watch mode's metrics: how much of the tree is watched and what the events cost."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge(
            "corral_agent_watch_active",
            "1 while kernel file events (inotify) keep the live root current, else 0.",
            registry=registry,
        )
        self.watched = Gauge(
            "corral_agent_watched_directories",
            "Directories under the checked paths with an inotify watch.",
            registry=registry,
        )
        self.unwatched = Gauge(
            "corral_agent_unwatched_directories",
            "Directories under the checked paths left without a watch (watch limit reached).",
            registry=registry,
        )
        self.unwatched_ratio = Gauge(
            "corral_agent_watch_unwatched_ratio",
            "Share of the checked directories without a watch: checked by interval scans only.",
            registry=registry,
        )
        self.events = Counter(
            "corral_agent_watch_events",
            "Paths touched by kernel file events (before coalescing).",
            registry=registry,
        )
        self.rescanned = Counter(
            "corral_agent_watch_rescanned_paths",
            "Paths examined again because an event touched them (after coalescing).",
            registry=registry,
        )
        self.full_rescans = Counter(
            "corral_agent_watch_full_rescans",
            "Full rescans watch mode asked for: the event queue overflowed, or the "
            "live state handed over to scans (too many changes to track).",
            ["reason"],
            registry=registry,
        )
        for reason in WATCH_RESCANS:
            self.full_rescans.labels(reason=reason)

    def show(self, *, watched: int, unwatched: int) -> None:
        self.watched.set(watched)
        self.unwatched.set(unwatched)
        total = watched + unwatched
        self.unwatched_ratio.set(unwatched / total if total else 0.0)


def new_registry(*, with_process: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process collector (RSS, CPU, fds) when asked."""
    registry = CollectorRegistry(auto_describe=True)
    if with_process:
        ProcessCollector(registry=registry)
    return registry


def serve_metrics(listen: str, registry: CollectorRegistry) -> None:
    """Serve ``/metrics`` for ``registry`` on ``HOST:PORT`` in a daemon thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=registry)
