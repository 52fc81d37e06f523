"""The controller's and the agent's exposition, checked by `promtool check metrics`.

promtool applies Prometheus' naming conventions (base units, `_total` on
counters only, help text, no camelCase). The test also holds the agreed metric
names (the dashboard and the alerts are written against them) and the bounded
label set: a label outside it (an instance id, a path, a digest) would make the
series count grow with the fleet.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.deploy_support import run

pytestmark = pytest.mark.prometheus

BOUNDED_LABELS = {
    "group", "state", "kind", "result", "reason", "source", "method", "code", "mode", "version",
    "writer", "loop",  # a fixed set each: who lost a write race; the scheduler's loops
}  # fmt: skip

CONTROLLER_NAMES = {
    "corral_build_info",
    "corral_instances",
    "corral_group_conformance_ratio",
    "corral_drift_detections",  # counters are parsed without their _total suffix
    "corral_taints",
    "corral_reports",
    "corral_reports_rejected",
    "corral_evidence_rejected",
    "corral_report_handling_seconds",
    "corral_instance_report_age_seconds",
    "corral_grpc_requests",
    "corral_images_registered",
    "corral_replacements",
    "corral_replacement_duration_seconds",
    "corral_replacements_in_progress",
    "corral_breaker_open",
    "corral_store_write_conflicts",
    "corral_background_loop_up",  # CorralBackgroundLoopDown is written against it
    "corral_background_loop_last_success_timestamp_seconds",
    "corral_background_loop_failures",
}
AGENT_NAMES = {
    "corral_agent_scan_duration_seconds",
    "corral_agent_bytes_hashed",
    "corral_agent_files_hashed",
    "corral_agent_scan_errors",
    "corral_agent_reports",
    "corral_agent_report_duration_seconds",
    "corral_agent_buffered_reports",
    "corral_agent_last_report_timestamp_seconds",
    "corral_agent_drift",
    "process_resident_memory_bytes",
    "process_cpu_seconds",
}


def _touch_every_metric(holder: object) -> None:
    """Give every labelled metric one child so it appears in the exposition."""
    for metric in vars(holder).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = metric._labelnames
        child = metric.labels(*(["x"] * len(names))) if names else metric
        if isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Histogram):
            child.observe(0.5)
        elif isinstance(child, Gauge):
            child.set(1)


def _controller_registry() -> CollectorRegistry:
    metrics_module = pytest.importorskip("controller.metrics", reason="controller.metrics missing")
    # Imported here: the controller package may be absent while the agent's check still runs.
    from controller.domain.model import Group, Instance, InstanceState  # noqa: PLC0415
    from controller.store.memory import MemoryStore  # noqa: PLC0415
    from tests.fixtures.clock import FakeClock  # noqa: PLC0415

    registry = CollectorRegistry()
    metrics = metrics_module.ControllerMetrics(registry)
    _touch_every_metric(metrics)
    store = MemoryStore()
    store.add_group(Group(name="web", desired_image_ref="web@sha256:" + "a" * 64))
    clock = FakeClock()
    for number, state in enumerate(InstanceState):
        instance = Instance(
            id=f"i-{number}", group="web", state=state, last_report=clock() - 10 * number
        )
        store.save_instance(instance)
    registry.register(metrics_module.FleetCollector(store, clock))
    return registry


def _agent_registry() -> CollectorRegistry:
    metrics_module = pytest.importorskip(
        "agent.daemon.metrics", reason="agent.daemon.metrics missing"
    )
    registry: CollectorRegistry = metrics_module.new_registry(with_process=True)
    _touch_every_metric(metrics_module.AgentMetrics(registry))
    return registry


@pytest.mark.parametrize(
    ("build", "expected"),
    [(_controller_registry, CONTROLLER_NAMES), (_agent_registry, AGENT_NAMES)],
    ids=["controller", "agent"],
)
def test_exposition_passes_promtool_check_metrics(
    tool: Callable[[str], str],
    build: Callable[[], CollectorRegistry],
    expected: set[str],
) -> None:
    exposition = generate_latest(build()).decode()
    result = run([tool("promtool"), "check", "metrics"], stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""

    families = list(text_string_to_metric_families(exposition))
    names = {family.name for family in families}
    missing = expected - names
    assert not missing, f"agreed metrics not exposed: {sorted(missing)}"
    for family in families:
        if not family.name.startswith("corral_"):
            continue
        for sample in family.samples:
            extra = set(sample.labels) - BOUNDED_LABELS - {"le"}
            assert not extra, f"{sample.name} has unbounded label(s) {sorted(extra)}"


def test_promtool_check_metrics_rejects_a_bad_name(tool: Callable[[str], str]) -> None:
    """The check can fail: a counter without `_total` and a millisecond unit are refused."""
    bad = "# HELP corral_scan_ms Scan time\n# TYPE corral_scan_ms counter\ncorral_scan_ms 3\n"
    result = run([tool("promtool"), "check", "metrics"], stdin=bad)
    assert result.returncode != 0
