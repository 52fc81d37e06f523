"""Agents report over real gRPC: conformance, drift, evidence, bad input, restarts."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.manifest.format import Entry, EntryType, entry_to_proto, root_of
from protos.corral.v1 import agent_pb2, fleet_pb2, manifest_pb2
from tests.fixtures.baked import Baked
from tests.fixtures.running import RunningController

S = agent_pb2


def _instance(running: RunningController, instance_id: str = "i-1") -> fleet_pb2.Instance:
    request = fleet_pb2.GetInstanceRequest(instance_id=instance_id)
    return running.fleet.GetInstance(request, timeout=5).instance


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def _drift(
    baked: Baked, changes: list[manifest_pb2.Change], root: bytes, seq: int
) -> agent_pb2.ReportDriftRequest:
    return S.ReportDriftRequest(
        header=baked.header(root=root, seq=seq), changes=changes, total_changes=len(changes)
    )


MODIFIED = Entry(b"/etc/passwd", EntryType.REGULAR, 0o644, 0, 0, 10, b"\x03" * 32)


def _modified_root(baked: Baked) -> bytes:
    entries = [MODIFIED if e.path == MODIFIED.path else e for e in baked.manifest.entries]
    return root_of(entries)


def _modified_change() -> manifest_pb2.Change:
    return manifest_pb2.Change(
        kind=manifest_pb2.CHANGE_KIND_MODIFIED,
        path=MODIFIED.path,
        entry=entry_to_proto(MODIFIED),
        attributes=["size", "content"],
    )


class TestConformance:
    def test_first_good_report_makes_the_instance_conformant(
        self, running: RunningController, web: Baked
    ) -> None:
        response = running.report(web.header())
        assert response.state == S.INSTANCE_STATE_CONFORMANT
        assert not response.evidence_wanted
        instance = _instance(running)
        assert instance.state == S.INSTANCE_STATE_CONFORMANT
        assert instance.last_seq == 1

    def test_undeclared_group_is_refused_and_nothing_is_stored(
        self, running: RunningController, web: Baked
    ) -> None:
        code = _code(lambda: running.report(web.header(group="ghost")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert _code(lambda: _instance(running)) == grpc.StatusCode.NOT_FOUND

    def test_duplicate_is_idempotent_and_stale_is_refused(
        self, running: RunningController, web: Baked
    ) -> None:
        running.report(web.header(seq=5))
        assert running.report(web.header(seq=5)).state == S.INSTANCE_STATE_CONFORMANT
        assert _code(lambda: running.report(web.header(seq=4))) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        conflicting = web.header(seq=5, root=b"\x09" * 32)
        assert _code(lambda: running.report(conflicting)) == grpc.StatusCode.ALREADY_EXISTS
        assert _instance(running).state == S.INSTANCE_STATE_CONFORMANT
        # A new boot restarts the sequence.
        assert running.report(web.header(seq=1, boot_id="boot-2", scanned_at_ms=2_000)).state == (
            S.INSTANCE_STATE_CONFORMANT
        )


class TestDrift:
    def test_file_drift_taints_with_verified_evidence_and_never_clears(
        self, running: RunningController, web: Baked
    ) -> None:
        running.report(web.header(seq=1))
        drifted = _modified_root(web)
        response = running.report(web.header(seq=2, root=drifted))
        assert response.state == S.INSTANCE_STATE_TAINTED
        assert response.evidence_wanted
        running.agent.ReportDrift(_drift(web, [_modified_change()], drifted, 3), timeout=5)
        taint = _instance(running).taint
        assert taint.kind == fleet_pb2.DRIFT_KIND_FILE
        assert taint.evidence_verified
        assert [c.path for c in taint.changes] == [b"/etc/passwd"]
        # The file restored: the instance stays tainted.
        assert running.report(web.header(seq=4)).state == S.INSTANCE_STATE_TAINTED

    def test_inconsistent_evidence_is_rejected_and_marks_suspicious(
        self, running: RunningController, web: Baked
    ) -> None:
        running.report(web.header(seq=1))
        wrong_root = b"\x07" * 32
        request = _drift(web, [_modified_change()], wrong_root, 2)
        assert _code(lambda: running.agent.ReportDrift(request, timeout=5)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        instance = _instance(running)
        assert instance.suspicious
        assert instance.state == S.INSTANCE_STATE_CONFORMANT
        assert instance.last_seq == 1

    def test_unregistered_digest_is_image_drift(
        self, running: RunningController, web: Baked
    ) -> None:
        other = "sha256:" + "f" * 64
        response = running.report(web.header(image_digest=other, image_ref="web@" + other))
        assert response.state == S.INSTANCE_STATE_TAINTED
        assert _instance(running).taint.kind == fleet_pb2.DRIFT_KIND_IMAGE

    def test_manual_taint(self, running: RunningController, web: Baked) -> None:
        running.report(web.header())
        request = fleet_pb2.TaintInstanceRequest(instance_id="i-1", reason="suspected breach")
        instance = running.fleet.TaintInstance(request, timeout=5).instance
        assert instance.state == S.INSTANCE_STATE_TAINTED
        assert instance.taint.kind == fleet_pb2.DRIFT_KIND_MANUAL


class TestBadInput:
    def test_oversize_message_is_resource_exhausted(
        self, running: RunningController, web: Baked
    ) -> None:
        request = S.ReportRequest(header=web.header(agent_version="x" * 300_000))
        code = _code(lambda: running.agent.Report(request, timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    def test_unknown_change_kind_is_invalid(self, running: RunningController, web: Baked) -> None:
        change = manifest_pb2.Change(kind=42, path=b"/etc/passwd")  # type: ignore[arg-type]
        request = _drift(web, [change], _modified_root(web), 1)
        assert _code(lambda: running.agent.ReportDrift(request, timeout=5)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        instance_id=st.one_of(st.just(""), st.text(max_size=200)),
        root=st.binary(max_size=40),
        group=st.one_of(st.just("web"), st.text(max_size=70)),
        digest=st.text(max_size=40),
        boot=st.text(max_size=80),
        path=st.binary(max_size=20),
        kind=st.integers(min_value=-1, max_value=5),
    )
    def test_malformed_reports_change_nothing(
        self,
        running: RunningController,
        web: Baked,
        instance_id: str,
        root: bytes,
        group: str,
        digest: str,
        boot: str,
        path: bytes,
        kind: int,
    ) -> None:
        running.report(web.header(instance_id="i-good", seq=1))
        before = running.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
        bad = S.ReportDriftRequest(
            header=S.ReportHeader(
                instance_id=instance_id or "i-good",
                group=group,
                image_ref=digest,
                image_digest=digest,
                root=root,
                seq=1,
                boot_id=boot,
            ),
            changes=[manifest_pb2.Change(kind=kind, path=path)],  # type: ignore[arg-type]
        )
        with pytest.raises(grpc.RpcError) as caught:
            running.agent.ReportDrift(bad, timeout=5)
        assert caught.value.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS,
        }
        after = running.fleet.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
        assert after == before


class TestRestartAndSilence:
    def test_restart_keeps_state_and_silence_means_unknown(
        self, running: RunningController, web: Baked
    ) -> None:
        running.report(web.header(instance_id="i-1", seq=1))
        running.report(web.header(instance_id="i-2", seq=1, root=_modified_root(web)))
        running.report(web.header(instance_id="i-1", seq=2))  # written behind
        running.stop()
        running.start()
        assert _instance(running, "i-1").state == S.INSTANCE_STATE_CONFORMANT
        assert _instance(running, "i-1").last_seq == 2
        assert _instance(running, "i-2").state == S.INSTANCE_STATE_TAINTED
        assert running.controller is not None
        running.clock.advance(91)
        marked = running.on_loop(running.controller.service.sweep_stale)
        assert marked == 1  # the tainted one stays tainted: silence never changes it
        assert _instance(running, "i-1").state == S.INSTANCE_STATE_UNKNOWN
        assert _instance(running, "i-2").state == S.INSTANCE_STATE_TAINTED
        assert running.report(web.header(instance_id="i-1", seq=3)).state == (
            S.INSTANCE_STATE_CONFORMANT
        )

    def test_a_long_controller_outage_is_not_the_fleets_silence(
        self, running: RunningController, web: Baked
    ) -> None:
        running.report(web.header(instance_id="i-1", seq=1))
        running.stop()
        running.clock.advance(3600)  # down for an hour: no agent could be heard
        running.start()
        assert running.controller is not None
        assert running.on_loop(running.controller.service.sweep_stale) == 0
        assert _instance(running, "i-1").state == S.INSTANCE_STATE_CONFORMANT
        running.clock.advance(91)  # still silent a full staleness period after the restart
        assert running.on_loop(running.controller.service.sweep_stale) == 1
        assert _instance(running, "i-1").state == S.INSTANCE_STATE_UNKNOWN


class TestImages:
    def test_registration_is_idempotent_and_immutable(self, running: RunningController) -> None:
        baked = Baked()
        assert running.register(baked).created
        assert not running.register(baked).created
        other = Baked(entries=[Entry(b"/x", EntryType.DIRECTORY, 0o755, 0, 0)])
        other.image.ref = baked.ref
        other.image.digest = baked.digest
        assert _code(lambda: running.register(other)) == grpc.StatusCode.ALREADY_EXISTS

    def test_manifest_not_matching_image_is_invalid(self, running: RunningController) -> None:
        baked = Baked()
        baked.encoded = baked.encoded[:-3]
        assert _code(lambda: running.register(baked)) == grpc.StatusCode.INVALID_ARGUMENT

    def test_group_needs_a_registered_image(self, running: RunningController) -> None:
        assert _code(lambda: running.create_group("web", Baked())) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )

    def test_health_serves_both_services(self, running: RunningController) -> None:
        assert running.channel is not None
        health = health_pb2_grpc.HealthStub(running.channel)
        for service in ("", "corral.v1.AgentService", "corral.v1.FleetService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
