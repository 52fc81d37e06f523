"""What the agent puts on the wire: sizes and conversions (no server needed)."""

from __future__ import annotations

import json
from dataclasses import replace

from agent.daemon.report import PendingReport, bound_evidence, change_size
from agent.daemon.transport import change_to_proto, drift_request, report_request, service_config
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryType
from agent.manifest.report import Evidence, Footprint, Report

# Realistic, long identities: an EC2-style id would be 19 characters; allow far more.
LONG_HEADER = Report(
    instance_id="i-" + "0123456789abcdef" * 4,  # 66 characters
    group="payments-api-production-eu-west-1-blue",
    image_ref="123456789012.dkr.ecr.eu-west-1.amazonaws.com/platform/payments-api@sha256:"
    + "f" * 64,
    image_digest="sha256:" + "f" * 64,
    root=b"\xff" * 32,
    seq=2**63 - 1,
    boot_id="8a7c0f64-3d2e-4a53-9e0b-1f2a3b4c5d6e",
    scanned_at_ms=4_102_444_800_000,  # the year 2100
    footprint=Footprint(rss_bytes=2**40, cpu_millis=2**50),
    agent_version="10.20.30+build.1234",
)


def test_a_steady_state_report_is_at_most_512_bytes() -> None:
    size = len(report_request(PendingReport(LONG_HEADER)).SerializeToString())
    assert size <= 512, size


def test_the_steady_state_report_does_not_grow_with_the_tree() -> None:
    # The header has no field that depends on the file count: same size for any root.
    small = report_request(PendingReport(LONG_HEADER)).ByteSize()
    other = replace(LONG_HEADER, root=b"\x01" * 32)
    assert report_request(PendingReport(other)).ByteSize() == small


def changes(count: int, *, path_len: int = 40) -> list[Change]:
    out = []
    for index in range(count):
        path = (b"/srv/app/" + str(index).encode()).ljust(path_len, b"x")
        entry = Entry(path, EntryType.SYMLINK, 0o777, 0, 0, 0, b"\x02" * 32, b"/target" * 3)
        out.append(Change(ChangeKind.MODIFIED, path, entry, ("target", "mode")))
    return out


def test_the_size_estimate_is_an_upper_bound() -> None:
    for change in [*changes(50, path_len=200), Change(ChangeKind.REMOVED, b"/x" * 300, None)]:
        assert change_to_proto(change).ByteSize() + 3 <= change_size(change)


def test_drift_evidence_respects_its_byte_budget_on_the_wire() -> None:
    evidence = bound_evidence(changes(5000), max_changes=10_000, max_bytes=64 * 1024)
    assert evidence.truncated and evidence.total_changes == 5000
    request = drift_request(PendingReport(LONG_HEADER, evidence))
    assert request.ByteSize() <= 64 * 1024 + 512
    assert len(request.changes) == len(evidence.changes) > 100


def test_evidence_grows_with_the_number_of_changes_only() -> None:
    one = drift_request(
        PendingReport(LONG_HEADER, bound_evidence(changes(1), max_changes=9, max_bytes=1 << 20))
    )
    ten = drift_request(
        PendingReport(LONG_HEADER, bound_evidence(changes(10), max_changes=99, max_bytes=1 << 20))
    )
    per_change = (ten.ByteSize() - one.ByteSize()) / 9
    assert 50 < per_change < 400


def test_an_untruncated_evidence_keeps_everything() -> None:
    evidence = bound_evidence(changes(3), max_changes=3, max_bytes=1 << 20)
    assert evidence == Evidence(tuple(changes(3)), truncated=False, total_changes=3)


def test_the_retry_policy_retries_unavailable_only() -> None:
    [method] = json.loads(service_config(deadline=5))["methodConfig"]
    assert method["name"] == [{"service": "corral.v1.AgentService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method["timeout"] == "5.000s"
