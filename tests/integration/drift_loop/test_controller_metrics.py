"""The controller's metrics: agreed names, bounded labels, flat cardinality.

Scrapes the controller's own registry (what ``--metrics-listen`` serves) after
real reports over gRPC: accepted, drifted, duplicate, refused, manual taints.
"""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from protos.corral.v1 import fleet_pb2
from tests.fixtures.baked import Baked
from tests.fixtures.running import RunningController

AGREED = {
    "corral_build_info": "gauge",
    "corral_instances": "gauge",
    "corral_group_conformance_ratio": "gauge",
    "corral_drift_detections": "counter",
    "corral_taints": "counter",
    "corral_reports": "counter",
    "corral_reports_rejected": "counter",
    "corral_evidence_rejected": "counter",
    "corral_report_handling_seconds": "histogram",
    "corral_instance_report_age_seconds": "histogram",
    "corral_grpc_requests": "counter",
    "corral_images_registered": "gauge",
}
ALLOWED_LABELS = {
    "group",
    "state",
    "kind",
    "source",
    "result",
    "reason",
    "method",
    "code",
    "version",
    "le",
    "quantile",
}


def exercise(
    running: RunningController, baked: Baked, *, instances: int, reports: int, first: int = 0
) -> None:
    """``instances`` agents, each sending ``reports`` reports; every third one drifts."""
    for n in range(first, first + instances):
        instance_id = f"i-{n:04d}"
        for seq in range(1, reports + 1):
            drifted = n % 3 == 0 and seq == reports
            root = b"\x07" * 32 if drifted else baked.manifest.root
            running.report(baked.header(instance_id=instance_id, seq=seq, root=root))
        # A duplicate and a stale report from every agent.
        running.report(baked.header(instance_id=instance_id, seq=reports, root=root))
        with pytest.raises(grpc.RpcError):
            running.report(baked.header(instance_id=instance_id, seq=0))
    with pytest.raises(grpc.RpcError):
        running.report(baked.header(instance_id="i-x", group="undeclared"))
    running.fleet.TaintInstance(
        fleet_pb2.TaintInstanceRequest(instance_id="i-0001", reason="by hand"), timeout=5
    )


def scrape(running: RunningController) -> str:
    return generate_latest(running.registry).decode()


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        if family.name.startswith("corral_")
        for sample in family.samples
    }


def test_agreed_names_and_bounded_labels(running: RunningController, web: Baked) -> None:
    exercise(running, web, instances=4, reports=3)
    text = scrape(running)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in AGREED.items():
        assert name in families, f"{name} missing from the scrape"
        assert families[name].type == kind, name
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (sample.name, sample.labels)
            for label in sample.labels.values():
                assert not label.startswith("i-"), f"instance id in {sample.name}"
                assert "sha256" not in label and "/" not in label.strip("/").split("/")[0]
    assert "i-0001" not in text and web.digest not in text

    def value(name: str, **labels: str) -> float:
        found = running.registry.get_sample_value(name, labels)
        assert found is not None, (name, labels)
        return found

    assert value("corral_reports_total", result="accepted") == 4 * 3 - 2
    assert value("corral_reports_total", result="drift") == 2
    assert value("corral_reports_total", result="duplicate") == 4
    assert value("corral_reports_total", result="rejected") == 5
    assert value("corral_reports_rejected_total", reason="stale") == 4
    assert value("corral_reports_rejected_total", reason="undeclared_group") == 1
    assert value("corral_taints_total", group="web", source="agent") == 2
    assert value("corral_taints_total", group="web", source="operator") == 1
    assert value("corral_drift_detections_total", group="web", kind="file") == 2
    assert value("corral_drift_detections_total", group="web", kind="manual") == 1
    assert value("corral_instances", group="web", state="tainted") == 3
    assert value("corral_instances", group="web", state="conformant") == 1
    assert value("corral_group_conformance_ratio", group="web") == 0.25
    assert value("corral_images_registered") == 1
    report = "/corral.v1.AgentService/Report"
    assert value("corral_grpc_requests_total", method=report, code="OK") == 4 * 4
    assert value("corral_grpc_requests_total", method=report, code="FAILED_PRECONDITION") == 5
    taint = "/corral.v1.FleetService/TaintInstance"
    assert value("corral_grpc_requests_total", method=taint, code="OK") == 1
    assert value("corral_report_handling_seconds_count") == 4 * 4
    assert value("corral_instance_report_age_seconds_count", group="web") == 4


def test_series_stay_flat_as_the_fleet_grows(running: RunningController, web: Baked) -> None:
    exercise(running, web, instances=6, reports=2)
    small = series(scrape(running))
    exercise(running, web, instances=60, reports=2, first=6)  # 66 instances in all
    large = series(scrape(running))
    assert large == small
    assert len(small) < 200


def test_unknown_methods_do_not_grow_the_label_set(running: RunningController) -> None:
    assert running.channel is not None
    for n in range(5):
        probe: grpc.UnaryUnaryMultiCallable[bytes, bytes] = running.channel.unary_unary(
            f"/corral.v1.AgentService/Probe{n}"
        )
        with pytest.raises(grpc.RpcError) as raised:
            probe(b"", timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Probe" not in scrape(running)
