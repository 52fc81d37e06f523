"""The wire edge against the real controller (SQLite): one regression test per finding.

Limits every store can hold, one status-code rule for every RPC, bounded and
escaped messages, undecodable bytes, paged lists with summaries, image_ref
checks, the evidence_wanted follow-up, CreateGroup's provider and size bounds,
reflection, storage faults and bugs classified at the edge (docs/api.md).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.daemon.report import PendingReport
from agent.daemon.transport import drift_request
from agent.image.bake import bake
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryType
from agent.manifest.policy import Policy
from agent.manifest.report import Evidence, Footprint, Report
from controller.api.edge import MAX_DETAILS
from controller.api.limits import INT64_MAX
from controller.cli.client import FleetClient
from controller.demo import fleet as support
from controller.errors import INTERNAL_DETAILS, UnavailableError
from controller.security.interceptor import RETRY_AFTER_METADATA
from protos.corral.v1 import agent_pb2, audit_pb2, audit_pb2_grpc, fleet_pb2
from tests.fixtures.baked import Baked
from tests.fixtures.clock import FakeClock
from tests.fixtures.running import RunningController

U64_MAX = 2**64 - 1


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _count(running: RunningController, method: str, code: str) -> float:
    value = running.registry.get_sample_value(
        "corral_grpc_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


def _stored(running: RunningController) -> list[Any]:
    """Everything the store holds for instances, as comparable values."""
    assert running.controller is not None
    store = running.controller.store
    store.flush()
    return sorted(
        (
            (i.id, i.state, i.seq, i.footprint, i.suspicious, i.taint)
            for i in store.list_instances()
        ),
        key=repr,
    )


# Integers every store can hold ---------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"footprint": agent_pb2.AgentFootprint(rss_bytes=U64_MAX)},
        {"footprint": agent_pb2.AgentFootprint(cpu_millis=INT64_MAX + 1)},
        {"seq": U64_MAX},
        {"scanned_at_ms": 2**62},
        {"scanned_at_ms": -1},
    ],
    ids=["rss", "cpu", "seq", "future", "negative"],
)
def test_a_value_no_store_can_hold_is_refused_and_the_fleet_keeps_working(
    running: RunningController, web: Baked, fields: dict[str, Any]
) -> None:
    running.report(web.header(seq=1))
    before = _stored(running)
    error = _refused(lambda: running.report(web.header(**{"seq": 2, **fields})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header." in (error.details() or "")
    assert _stored(running) == before
    # Heartbeats at the limit are stored and survive a restart.
    big = agent_pb2.AgentFootprint(rss_bytes=INT64_MAX, cpu_millis=INT64_MAX)
    running.report(web.header(seq=3, footprint=big))
    running.stop()
    running.start()
    listed = running.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
    assert [i.footprint.rss_bytes for i in listed.instances] == [INT64_MAX]


# Ids: empty, long, unknown ---------------------------------------------------------


def test_empty_ids_are_invalid_argument_in_every_rpc(
    running: RunningController, web: Baked
) -> None:
    assert running.channel is not None
    audit = audit_pb2_grpc.AuditServiceStub(running.channel)
    calls: list[Callable[[], object]] = [
        lambda: running.fleet.GetInstance(fleet_pb2.GetInstanceRequest(), timeout=5),
        lambda: running.fleet.TaintInstance(
            fleet_pb2.TaintInstanceRequest(reason="why"), timeout=5
        ),
        lambda: running.fleet.Rollout(fleet_pb2.RolloutRequest(image_ref=web.ref), timeout=5),
        lambda: running.fleet.Rollback(fleet_pb2.RollbackRequest(), timeout=5),
        lambda: running.fleet.ResumeGroup(fleet_pb2.ResumeGroupRequest(), timeout=5),
        lambda: audit.AuditHistory(audit_pb2.AuditHistoryRequest(), timeout=5),
    ]
    for call in calls:
        error = _refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "is empty" in (error.details() or "")


def test_a_10_kb_id_is_refused_with_a_bounded_escaped_echo(
    running: RunningController, web: Baked
) -> None:
    long_id = "i-" + "x" * 10_000 + "\n\x00"
    error = _refused(
        lambda: running.fleet.GetInstance(
            fleet_pb2.GetInstanceRequest(instance_id=long_id), timeout=5
        )
    )
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) < 400 and "more characters" in details and "\x00" not in details


def test_an_unknown_id_is_not_found(running: RunningController, web: Baked) -> None:
    error = _refused(
        lambda: running.fleet.GetInstance(
            fleet_pb2.GetInstanceRequest(instance_id="i-9"), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and '"i-9"' in (error.details() or "")
    error = _refused(
        lambda: running.fleet.ResumeGroup(fleet_pb2.ResumeGroupRequest(group="nope"), timeout=5)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_an_unregistered_image_is_failed_precondition_from_every_rpc(
    running: RunningController, web: Baked
) -> None:
    other = Baked("other")
    create = _refused(
        lambda: running.create_group("api", other)  # image never registered
    )
    rollout = _refused(
        lambda: running.fleet.Rollout(
            fleet_pb2.RolloutRequest(group="web", image_ref=other.ref), timeout=5
        )
    )
    assert create.code() == rollout.code() == grpc.StatusCode.FAILED_PRECONDITION


# Undecodable bytes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "/corral.v1.AgentService/Report",
        "/corral.v1.AgentService/ReportDrift",
        "/corral.v1.FleetService/GetInstance",
        "/corral.v1.FleetService/ListInstances",
    ],
)
def test_undecodable_bytes_are_invalid_argument_and_counted(
    running: RunningController, method: str
) -> None:
    assert running.channel is not None
    call = running.channel.unary_unary(
        method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw
    )
    error = _refused(lambda: call(b"\xff\xff\xff\xff\x0f", timeout=5))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid corral.v1." in details and "Error" not in details
    assert _count(running, method, "INVALID_ARGUMENT") == 1


def test_an_undecodable_stream_message_is_invalid_argument(running: RunningController) -> None:
    assert running.channel is not None
    method = "/corral.v1.FleetService/RegisterImage"
    call = running.channel.stream_unary(
        method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw
    )
    error = _refused(lambda: call(iter([b"\x0a\xff"]), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _count(running, method, "INVALID_ARGUMENT") == 1


# Faults and bugs at the edge ------------------------------------------------------------


def test_a_storage_fault_is_unavailable_with_a_retry_hint(
    running: RunningController, web: Baked, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert running.controller is not None
    store = running.controller.store

    def broken(instance_id: str) -> None:
        raise UnavailableError("database is locked")

    monkeypatch.setattr(store, "get_instance", broken)
    error = _refused(lambda: running.report(web.header()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert isinstance(error, grpc.Call)
    assert (RETRY_AFTER_METADATA, "1000") in tuple(error.trailing_metadata() or ())
    assert _count(running, "/corral.v1.AgentService/Report", "UNAVAILABLE") == 1


def test_a_bug_is_internal_with_a_generic_message_logged_once(
    running: RunningController,
    web: Baked,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert running.controller is not None
    store = running.controller.store

    def broken(*args: object) -> None:
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(store, "get_instance", broken)
    for call in (
        lambda: running.report(web.header()),
        lambda: running.fleet.GetInstance(
            fleet_pb2.GetInstanceRequest(instance_id="i-1"), timeout=5
        ),
    ):
        error = _refused(call)
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == INTERNAL_DETAILS
    assert _count(running, "/corral.v1.AgentService/Report", "INTERNAL") == 1
    assert _count(running, "/corral.v1.FleetService/GetInstance", "INTERNAL") == 1
    logged = [r for r in caplog.records if r.exc_info and "unexpectedly" in r.getMessage()]
    assert len(logged) == 2


# Lists: pages and summaries -----------------------------------------------------------------


def _agent_report(baked: Baked, instance_id: str, evidence: Evidence) -> PendingReport:
    """A report as the agent's own code queues it, for the root ``\\x09...``."""
    agent_header = Report(
        instance_id=instance_id,
        group="web",
        image_ref=baked.ref,
        image_digest=baked.digest,
        root=b"\x09" * 32,
        seq=1,
        boot_id="boot-1",
        scanned_at_ms=1_000,
        footprint=Footprint(rss_bytes=1, cpu_millis=1),
        agent_version="0.1.0",
    )
    return PendingReport(header=agent_header, evidence=evidence)


def _drift(baked: Baked, instance_id: str, paths: int) -> agent_pb2.ReportDriftRequest:
    """A drift report adding ``paths`` files of long names (about 1 KiB each)."""
    names = [b"/srv/" + b"d" * 1000 + b"/%05d" % n for n in range(paths)]
    changes = tuple(
        Change(ChangeKind.ADDED, name, Entry(name, EntryType.REGULAR, 0o644, 0, 0, 1, b"\x03" * 32))
        for name in names
    )
    evidence = Evidence(changes=changes, truncated=True, total_changes=paths + 1)
    return drift_request(_agent_report(baked, instance_id, evidence))


def test_five_instances_with_big_evidence_list_in_pages_of_summaries(
    running: RunningController, web: Baked
) -> None:
    for n in range(5):  # each drift report about 200 KiB: five exceed the 256 KiB limit
        running.agent.ReportDrift(_drift(web, f"i-{n}", 100), timeout=10)
    listed = running.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
    assert len(listed.instances) == 5 and not listed.next_page_token
    assert all(not i.taint.changes and i.taint.changes_recorded == 100 for i in listed.instances)
    shown = running.fleet.GetInstance(fleet_pb2.GetInstanceRequest(instance_id="i-3"), timeout=5)
    assert shown.instance.taint.changes_recorded == 100
    assert 0 < len(shown.instance.taint.changes) < 100  # a quarter of max_message_bytes
    # Pages of two, followed by the CLI's client.
    client = FleetClient(running.address)
    try:
        request = fleet_pb2.ListInstancesRequest(page_size=2)
        first = running.fleet.ListInstances(request, timeout=5)
        assert [i.id for i in first.instances] == ["i-0", "i-1"] and first.next_page_token
        every = client.list_all(client.stub.ListInstances, request, "instances")
        assert [i.id for i in every] == [f"i-{n}" for n in range(5)]
    finally:
        client.close()


def test_a_page_token_is_bound_to_its_filter(running: RunningController, web: Baked) -> None:
    for n in range(3):
        running.report(web.header(instance_id=f"i-{n}"))
    first = running.fleet.ListInstances(
        fleet_pb2.ListInstancesRequest(group="web", page_size=1), timeout=5
    )
    for request in (
        fleet_pb2.ListInstancesRequest(page_token=first.next_page_token),
        fleet_pb2.ListInstancesRequest(group="web", page_token="garbage!"),
        fleet_pb2.ListInstancesRequest(page_size=-1),
    ):
        error = _refused(functools.partial(running.fleet.ListInstances, request, timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# image_ref ----------------------------------------------------------------------------------


def test_a_forged_image_ref_for_a_registered_digest_is_refused(
    running: RunningController, web: Baked
) -> None:
    forged = f"forged@{web.digest}"
    error = _refused(lambda: running.report(web.header(image_ref=forged)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = _refused(lambda: running.report(web.header(image_ref="web@sha256:" + "0" * 64)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _stored(running) == []


def test_an_unregistered_digest_is_recorded_by_digest_never_by_its_claimed_name(
    running: RunningController, web: Baked
) -> None:
    digest = "sha256:" + "e" * 64
    response = running.report(web.header(image_ref=f"madeup@{digest}", image_digest=digest))
    assert response.state == agent_pb2.INSTANCE_STATE_TAINTED
    shown = running.fleet.GetInstance(fleet_pb2.GetInstanceRequest(instance_id="i-1"), timeout=5)
    assert shown.instance.image_ref == digest
    assert running.channel is not None
    audit = audit_pb2_grpc.AuditServiceStub(running.channel)
    history = audit.AuditHistory(audit_pb2.AuditHistoryRequest(instance_id="i-1"), timeout=5)
    assert all("madeup" not in (r.image + r.data_json) for r in history.records)


# evidence_wanted ---------------------------------------------------------------------------


def test_the_evidence_wanted_follow_up_from_a_raw_client_is_accepted(
    running: RunningController, web: Baked
) -> None:
    other_root = b"\x07" * 32  # the agent's own baseline, not the registered manifest
    first = running.report(web.header(root=other_root))
    assert first.state == agent_pb2.INSTANCE_STATE_TAINTED and first.evidence_wanted
    follow_up = agent_pb2.ReportDriftRequest(header=web.header(root=other_root, seq=2))
    answer = running.agent.ReportDrift(follow_up, timeout=5)
    assert answer.state == agent_pb2.INSTANCE_STATE_TAINTED
    shown = running.fleet.GetInstance(fleet_pb2.GetInstanceRequest(instance_id="i-1"), timeout=5)
    assert not shown.instance.suspicious and shown.instance.taint.baseline_mismatch
    again = running.report(web.header(root=other_root, seq=3))
    assert not again.evidence_wanted


# Evidence paths -----------------------------------------------------------------------------


def test_evidence_errors_show_paths_in_the_documented_form(
    running: RunningController, web: Baked
) -> None:
    request = agent_pb2.ReportDriftRequest(header=web.header(root=b"\x07" * 32))
    request.changes.add(kind=2, path=b"etc/\xffname")  # relative: refused at the edge
    error = _refused(lambda: running.agent.ReportDrift(request, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "etc/%FFname" in (error.details() or "") and "b'" not in (error.details() or "")
    inconsistent = agent_pb2.ReportDriftRequest(header=web.header(root=b"\x07" * 32))
    inconsistent.changes.add(kind=2, path=b"/srv/\xffgone")  # removed, but the image lacks it
    error = _refused(lambda: running.agent.ReportDrift(inconsistent, timeout=5))
    assert "/srv/%FFgone" in (error.details() or "") and "b'" not in (error.details() or "")


# CreateGroup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"provider": "locla"}, grpc.StatusCode.FAILED_PRECONDITION),
        ({"desired_size": 10_001}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"max_concurrent_replacements": 1_001}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["typo-provider", "size", "budget"],
)
def test_create_group_refuses_unconfigured_providers_and_unbounded_sizes(
    running: RunningController, web: Baked, fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    group = fleet_pb2.Group(name="api", desired_image_ref=web.ref, **fields)
    error = _refused(
        lambda: running.fleet.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=5)
    )
    assert error.code() == code
    names = [g.name for g in running.fleet.ListGroups(fleet_pb2.ListGroupsRequest()).groups]
    assert names == ["web"]


# Reflection ----------------------------------------------------------------------------------


def test_reflection_lists_and_describes_the_services(running: RunningController) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="corral.v1.FleetService"),
    ]
    answers = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "corral.v1.AgentService",
        "corral.v1.FleetService",
        "corral.v1.AuditService",
        "grpc.health.v1.Health",
    } <= names
    files = answers[1].file_descriptor_response.file_descriptor_proto
    assert any(b"ListInstancesRequest" in f for f in files)


def test_details_are_bounded(running: RunningController, web: Baked) -> None:
    error = _refused(
        lambda: running.fleet.TaintInstance(
            fleet_pb2.TaintInstanceRequest(instance_id="i-1", reason="x" * 5000), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details() or "") <= MAX_DETAILS


def test_the_evidence_wanted_follow_up_from_the_real_agent_is_accepted(
    running: RunningController, clock: FakeClock, tmp_path: Path
) -> None:
    """``corral-agent run --once`` whose baseline differs from the registered manifest."""
    # The real agent stamps its scans with the wall clock, and the controller refuses
    # a report stamped further ahead of its own clock than the skew it allows.
    clock.set(time.time())
    tree = tmp_path / "tree"
    support.write_sample_root(tree, files=3)
    bake_dir = tmp_path / "bake"
    bake(str(tree), str(bake_dir), policy=Policy(), name="app", version="1")
    document = json.loads((bake_dir / "image.json").read_text())
    registered = Baked("app")  # another tree's manifest, registered under the agent's image
    image = fleet_pb2.Image()
    image.CopyFrom(registered.image)
    image.ref, image.digest = document["image_ref"], document["image_digest"]
    running.fleet.RegisterImage(
        iter([fleet_pb2.RegisterImageRequest(image=image, manifest_chunk=registered.encoded)]),
        timeout=5,
    )
    group = fleet_pb2.Group(name="web", desired_image_ref=image.ref)
    running.fleet.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=5)
    argv = [
        sys.executable, "-m", "agent.daemon.cli", "run", "--once",
        "--controller", running.address,
        "--root", str(tree),
        "--instance-id", "i-real",
        "--image-json", str(bake_dir / "image.json"),
        "--group", "web",
        "--deadline", "5",
        "--nice", "0",
        "--data-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "controller asked for evidence" in done.stderr + done.stdout
    shown = running.fleet.GetInstance(
        fleet_pb2.GetInstanceRequest(instance_id="i-real"), timeout=5
    ).instance
    assert shown.state == agent_pb2.INSTANCE_STATE_TAINTED
    assert not shown.suspicious and shown.taint.baseline_mismatch
    assert shown.taint.actor == "agent:i-real"
