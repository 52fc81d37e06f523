"""Which audit events an instance change writes (controller.audit.trail), without a store."""

from __future__ import annotations

from dataclasses import replace

from agent.manifest.diff import Change, ChangeKind
from controller.audit.record import EventKind
from controller.audit.trail import instance_events, operator_actor, replacement_events
from controller.domain.model import DriftKind, Instance, InstanceState, Taint
from controller.domain.replacement_actions import Kind, Phase, Strategy
from controller.domain.replacement_record import ReplacementRecord
from controller.security.caller import caller
from controller.security.identity import Identity, Role

RUNNING = Instance(id="i-1", group="web", state=InstanceState.CONFORMANT, image_ref="web@sha256:1")


def events(before: Instance | None, after: Instance) -> list[tuple[str, object]]:
    found = instance_events(before, after, at_ms=5, actor="agent:i-1", source="agent")
    return [(str(e.kind), e.data.get("to", e.data.get("drift"))) for e in found]


def test_a_heartbeat_writes_nothing() -> None:
    assert events(RUNNING, replace(RUNNING, seq=7, last_report=9.0)) == []


def test_first_sighting_state_change_and_image_change_write_a_transition() -> None:
    assert events(None, RUNNING) == [("instance.state", "conformant")]
    assert events(RUNNING, replace(RUNNING, state=InstanceState.UNKNOWN)) == [
        ("instance.state", "unknown")
    ]
    moved = events(RUNNING, replace(RUNNING, image_ref="web@sha256:2"))
    assert moved == [("instance.state", "conformant")]


def test_a_file_taint_writes_evidence_taint_and_transition_and_later_evidence_once() -> None:
    taint = Taint(kind=DriftKind.FILE, reason="root differs", actor="agent:i-1", at=4.0)
    tainted = replace(RUNNING, state=InstanceState.TAINTED, taint=taint)
    assert events(RUNNING, tainted) == [
        ("instance.drift", "file"),
        ("instance.taint", "file"),
        ("instance.state", "tainted"),
    ]
    change = Change(ChangeKind.MODIFIED, b"/etc/x", None, ("sha256",))
    evidenced = replace(tainted, taint=replace(taint, changes=(change,), evidence_verified=True))
    written = instance_events(tainted, evidenced, at_ms=6, actor="agent:i-1", source="agent")
    assert [e.kind for e in written] == [EventKind.DRIFT_EVIDENCE]
    assert written[0].data["modified"] == 1 and written[0].data["first_paths"] == ["/etc/x"]
    assert written[0].data["evidence_verified"] is True


def test_a_manual_taint_has_no_evidence_and_suspicion_is_recorded_once() -> None:
    taint = Taint(kind=DriftKind.MANUAL, reason="rotate", actor="operator:bob", at=4.0)
    manual = replace(RUNNING, state=InstanceState.TAINTED, taint=taint)
    assert [k for k, _ in events(RUNNING, manual)] == ["instance.taint", "instance.state"]
    flagged = replace(RUNNING, suspicious=True)
    assert events(RUNNING, flagged) == [("instance.suspicious", None)]
    assert events(flagged, replace(flagged, seq=3)) == []


def test_replacement_steps_only_when_the_phase_moves() -> None:
    row = ReplacementRecord(
        replacement_id="r-1",
        group="web",
        instance_id="i-1",
        kind=Kind.TAINT,
        strategy=Strategy.SURGE,
        phase=Phase.RECORDED,
        image_ref="web@sha256:1",
        started_at=1.0,
        recorded_at=1.0,
    )
    assert [e.data["phase"] for e in replacement_events(None, row, at_ms=1)] == ["recorded"]
    assert replacement_events(row, replace(row, attempt=2), at_ms=2) == []
    launching = replacement_events(row, replace(row, phase=Phase.LAUNCHING), at_ms=3)
    assert [e.data["phase"] for e in launching] == ["launching"]


def test_the_actor_is_the_certificate_else_the_name_sent() -> None:
    assert operator_actor("alice@laptop") == "operator:alice@laptop"
    assert operator_actor("operator:alice") == "operator:alice"
    assert operator_actor("") == "operator:unknown"
    token = caller.set(Identity(Role.OPERATOR, "carol"))
    try:
        assert operator_actor("alice@laptop") == "operator:carol"
    finally:
        caller.reset(token)
