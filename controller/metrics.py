"""The controller's Prometheus metrics, with the agreed names and bounded labels only.

Counters and histograms are updated by :mod:`controller.engine.reports` and the gRPC
interceptor; the fleet gauges (instances per state, conformance ratio, report
age) are computed at scrape time by :class:`FleetCollector` from the store, so
they can never drift from it. The registry is injected: tests use a private one.
Labels are limited to group, state, kind, result, reason, source, method and
code — never an instance id, a path or a digest.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from agent.clock import Clock
from agent.version import corral_version
from controller.domain.model import InstanceState
from controller.domain.replacement import ACTIVE_PHASES
from controller.ports import Store

# Report age buckets (seconds): agents report every 30 s by default.
AGE_BUCKETS = (5.0, 15.0, 30.0, 60.0, 90.0, 180.0, 300.0, 900.0, 3600.0)
REPLACEMENT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
HANDLING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ControllerMetrics:
    """Every metric the controller emits, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        build = Gauge("corral_build_info", "corral build", ["version"], registry=registry)
        build.labels(version=corral_version()).set(1)
        self.drift_detections = Counter(
            "corral_drift_detections_total",
            "Instances found drifted, by kind of drift",
            ["group", "kind"],
            registry=registry,
        )
        self.taints = Counter(
            "corral_taints_total",
            "Instances tainted, by who found the drift",
            ["group", "source"],
            registry=registry,
        )
        self.reports = Counter(
            "corral_reports_total", "Agent reports by result", ["result"], registry=registry
        )
        self.reports_rejected = Counter(
            "corral_reports_rejected_total",
            "Agent reports refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.evidence_rejected = Counter(
            "corral_evidence_rejected_total",
            "Drift evidence that did not hash to the reported root",
            ["group"],
            registry=registry,
        )
        self.report_handling = Histogram(
            "corral_report_handling_seconds",
            "Time to decide and store one agent report",
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self.grpc_requests = Counter(
            "corral_grpc_requests_total",
            "gRPC requests served, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.replacements = Counter(
            "corral_replacements_total",
            "Replacements finished or attempts failed, by result",
            ["group", "result"],
            registry=registry,
        )
        self.replacement_duration = Histogram(
            "corral_replacement_duration_seconds",
            "From the taint (or the rollout) to the replacement done",
            ["group"],
            buckets=REPLACEMENT_BUCKETS,
            registry=registry,
        )
        self.write_conflicts = Counter(
            "corral_store_write_conflicts_total",
            "Compare-and-set writes that lost a race (nothing written; decided again or left)",
            ["writer"],
            registry=registry,
        )
        self.loop_up = Gauge(
            "corral_background_loop_up",
            "1 while a background loop runs on schedule, 0 when it died, failed or stalled",
            ["loop"],
            registry=registry,
        )
        self.loop_last_success = Gauge(
            "corral_background_loop_last_success_timestamp_seconds",
            "When a background loop last finished a run without an error",
            ["loop"],
            registry=registry,
        )
        self.loop_failures = Counter(
            "corral_background_loop_failures_total",
            "Runs of a background loop that raised (logged with the traceback)",
            ["loop"],
            registry=registry,
        )
        self.replacement_errors = Counter(
            "corral_replacement_errors_total",
            "Replacement steps that failed and are retried next tick, by reason",
            ["group", "reason"],
            registry=registry,
        )


class FleetCollector(Collector):
    """Fleet gauges computed at scrape time from the store."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        now = self._clock()
        counts: dict[tuple[str, str], int] = {}
        ages: dict[str, list[float]] = {}
        for declared in self._store.list_groups():
            for state in InstanceState:
                counts[(declared.name, state.value)] = 0
            ages[declared.name] = []
        for instance in self._store.list_instances():
            key = (instance.group, instance.state.value)
            counts[key] = counts.get(key, 0) + 1
            if instance.last_report and instance.state != InstanceState.RETIRED:
                ages.setdefault(instance.group, []).append(max(0.0, now - instance.last_report))
        instances = GaugeMetricFamily(
            "corral_instances", "Instances by group and state", labels=["group", "state"]
        )
        for (group, state_name), count in sorted(counts.items()):
            instances.add_metric([group, state_name], count)
        yield instances
        ratio = GaugeMetricFamily(
            "corral_group_conformance_ratio",
            "Share of a group's live instances that are conformant",
            labels=["group"],
        )
        for group in sorted(ages):
            live = sum(
                n for (g, s), n in counts.items() if g == group and s != InstanceState.RETIRED.value
            )
            conformant = counts.get((group, InstanceState.CONFORMANT.value), 0)
            ratio.add_metric([group], conformant / live if live else 1.0)
        yield ratio
        yield _age_histogram(ages)
        yield from _replacement_gauges(self._store)
        images = GaugeMetricFamily("corral_images_registered", "Images in the registry")
        images.add_metric([], len(self._store.list_images()))
        yield images


def _replacement_gauges(store: Store) -> Iterator[GaugeMetricFamily]:
    """In-flight replacements and breaker state, for every group (0 included)."""
    groups = store.list_groups()
    in_flight = {group.name: 0 for group in groups}
    for row in store.list_replacements():
        if row.phase in ACTIVE_PHASES and row.group in in_flight:
            in_flight[row.group] += 1
    progress = GaugeMetricFamily(
        "corral_replacements_in_progress",
        "Replacements in flight (recorded and not finished)",
        labels=["group"],
    )
    breaker = GaugeMetricFamily(
        "corral_breaker_open", "1 while the group's circuit breaker is open", labels=["group"]
    )
    for group in groups:
        progress.add_metric([group.name], in_flight[group.name])
        breaker.add_metric([group.name], 1 if group.breaker_open else 0)
    yield progress
    yield breaker


def _age_histogram(ages: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "corral_instance_report_age_seconds",
        "Time since each instance's last report",
        labels=["group"],
    )
    for group in sorted(ages):
        values = ages[group]
        buckets = [
            (str(bound), float(sum(1 for v in values if v <= bound))) for bound in AGE_BUCKETS
        ]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([group], buckets, sum_value=sum(values))
    return family


def serve_metrics(registry: CollectorRegistry, listen: str) -> None:
    """Expose ``registry`` over HTTP on ``HOST:PORT`` (a daemon thread)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
