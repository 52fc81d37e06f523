"""Every durable change the controller makes lands in the audit log, atomically with it.

Runs against the memory and the SQLite store: each operation writes the
expected records (kind, actor, states, image), a refused call writes none, a
heartbeat writes none, a failing audit append rolls the state change back, and
the time-travel queries over the log the real service wrote match the history
that was played.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import controller.store.sqlite as sqlite_store
from controller.audit import AuditError, MemoryAuditLog, append_in
from controller.audit.record import Event, EventKind, Record
from controller.domain.breaker import BreakerState
from controller.domain.model import Group, InstanceState
from controller.domain.replacement_actions import (
    Complete,
    Kind,
    Launch,
    OpenBreaker,
    Phase,
    StartReplacement,
    Strategy,
    Terminate,
)
from controller.engine.effects import Effects
from controller.engine.groups import resume_group, rollback_group, rollout_group
from controller.errors import ControllerError, FailedPreconditionError, NotFoundError
from controller.providers.base import (
    InstanceState as ProviderState,
)
from controller.providers.base import (
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
)
from controller.store.memory import MemoryStore
from controller.store.sqlite import SqliteStore
from tests.integration.audit_support import START, Fleet, make_fleet, ms, open_store


@pytest.fixture(params=["memory", "sqlite"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    store = open_store(request.param, tmp_path / "data")
    yield make_fleet(store)
    store.close()


def kinds(records: list[Record]) -> list[str]:
    return [str(r.event.kind) for r in records]


def transitions(records: list[Record], instance_id: str) -> list[tuple[object, object]]:
    return [
        (r.event.data["from"], r.event.data["to"])
        for r in records
        if r.event.kind is EventKind.INSTANCE_STATE and r.event.instance_id == instance_id
    ]


def test_registration_and_group_creation_are_recorded_once(fleet: Fleet) -> None:
    v1 = fleet.image("1")
    fleet.image("1")  # the same image again: idempotent, nothing recorded
    fleet.group(v1)
    fleet.group(v1)  # same group again: nothing recorded
    records = fleet.records()
    assert kinds(records) == ["image.registered", "group.created"]
    registered, created = records
    assert registered.event.actor == "operator:alice" and registered.event.image == v1.ref
    assert registered.event.data["digest"] == v1.digest
    assert registered.event.at_ms == ms(START)
    assert created.event.group == "web" and created.event.image == v1.ref
    assert created.event.data == {"mode": "observe"}


def test_refused_calls_record_nothing(fleet: Fleet) -> None:
    v1 = fleet.image("1")
    before = len(fleet.records())
    with pytest.raises(FailedPreconditionError):
        fleet.service.create_group(Group(name="db", desired_image_ref="db@sha256:" + "0" * 64))
    with pytest.raises(FailedPreconditionError):
        fleet.report("i-1", v1, seq=1)  # group "web" is not declared yet
    with pytest.raises(NotFoundError):
        fleet.service.taint("i-9", reason="no such instance", actor="alice")
    with pytest.raises(NotFoundError):
        rollout_group(fleet.store, "nope", v1.ref, actor="alice", clock=fleet.clock)
    assert len(fleet.records()) == before


def test_agent_reports_record_launch_and_drift_but_not_heartbeats(fleet: Fleet) -> None:
    v1 = fleet.image("1")
    fleet.group(v1)
    fleet.report("i-1", v1, seq=1)
    fleet.clock.advance(5)
    fleet.report("i-1", v1, seq=2)  # heartbeat
    fleet.report("i-1", v1, seq=2)  # duplicate
    after_heartbeats = len(fleet.records())
    fleet.clock.advance(5)
    fleet.report("i-1", v1, seq=3, drifted=True)
    records = fleet.records()
    assert after_heartbeats == 3
    assert kinds(records[2:]) == [
        "instance.state",
        "instance.drift",
        "instance.taint",
        "instance.state",
    ]
    launch, evidence, taint, tainted = records[2:]
    assert launch.event.actor == "agent:i-1" and launch.event.data == {
        "from": None,
        "to": "conformant",
    }
    assert launch.event.image == v1.ref and launch.event.group == "web"
    assert evidence.event.data["drift"] == "file"
    assert taint.event.data == {"source": "agent", "drift": "file"}
    assert tainted.event.data == {"from": "conformant", "to": "tainted"}
    assert tainted.event.at_ms == ms(START + 10)


def test_operator_taint_and_silence_name_their_actors(fleet: Fleet) -> None:
    v1 = fleet.image("1")
    fleet.group(v1)
    fleet.report("i-1", v1, seq=1)
    fleet.report("i-2", v1, seq=1)
    fleet.service.taint("i-1", reason="suspected compromise", actor="bob@host")
    fleet.service.taint("i-1", reason="again", actor="bob@host")  # already tainted: nothing
    fleet.clock.advance(120)
    assert fleet.service.sweep_stale() >= 1
    records = fleet.records()
    taint = next(r for r in records if r.event.kind is EventKind.TAINT)
    assert taint.event.actor == "operator:bob@host"
    assert taint.event.reason == "suspected compromise"
    assert taint.event.data == {"source": "operator", "drift": "manual"}
    assert transitions(records, "i-1")[-1] == ("conformant", "tainted")
    silent = [r for r in records if r.event.data.get("to") == "unknown"]
    assert [r.event.instance_id for r in silent] == ["i-2"]
    assert silent[0].event.actor == "controller"


def test_rollout_rollback_and_resume_are_recorded(fleet: Fleet) -> None:
    v1, v2 = fleet.image("1"), fleet.image("2")
    fleet.group(v1)
    fleet.clock.advance(1)
    rollout_group(fleet.store, "web", v2.ref, actor="carol", clock=fleet.clock)
    fleet.clock.advance(1)
    rollback_group(fleet.store, "web", actor="carol", clock=fleet.clock)
    fleet.clock.advance(1)
    resume_group(fleet.store, "web", clock=fleet.clock, actor="carol")  # closed: nothing
    group = fleet.store.get_group("web")
    assert group is not None
    fleet.store.update_group(
        Group(**{**group.__dict__, "breaker_open": True, "breaker_reason": "test"})
    )
    resume_group(fleet.store, "web", clock=fleet.clock, actor="carol")
    records = fleet.records()
    assert kinds(records)[3:] == ["group.rollout", "group.rollback", "group.breaker_resume"]
    rollout, rollback, resume = records[3:]
    assert rollout.event.data == {"from": v1.ref, "to": v2.ref}
    assert rollback.event.data == {"from": v2.ref, "to": v1.ref}
    assert {r.event.actor for r in (rollout, rollback, resume)} == {"operator:carol"}
    images = {i.image: i for i in fleet.store.audit_log().image_history()}
    assert [s.how for s in images[v1.ref].desired] == ["group.created", "group.rollback"]


class _Provider(Provider):
    name = "fake"
    replacement_strategy = ReplacementStrategy.SURGE

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        return LaunchedInstance(spec.instance_id, spec.group, ProviderState.RUNNING)

    def terminate(self, instance_id: str) -> None:
        pass

    def list(self, group: str) -> list[LaunchedInstance]:
        return []

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        return None


def test_replacement_steps_and_instances_it_moves_are_recorded(fleet: Fleet) -> None:
    v1 = fleet.image("1")
    fleet.group(v1)
    fleet.report("i-1", v1, seq=1, drifted=True)
    effects = Effects(
        fleet.store, clock=fleet.clock, metrics=fleet.service.metrics, controller_address="x"
    )
    group = fleet.store.get_group("web")
    assert group is not None
    provider = _Provider()
    key = "web/taint/i-1"

    def apply(action: object) -> None:
        asyncio.run(effects.apply(action, group=group, provider=provider))  # type: ignore[arg-type]

    apply(StartReplacement("web", "i-1", Kind.TAINT, key, Strategy.SURGE, v1.ref))
    apply(Launch(key, "launch-1", v1.ref, 1))
    row = fleet.store.get_replacement(key)
    assert row is not None and row.new_instance_id is not None
    new_id = row.new_instance_id
    fleet.report(new_id, v1, seq=1)
    apply(Terminate(key, "i-1"))
    apply(Complete(key, new_id))
    apply(OpenBreaker("web", BreakerState(open=True, opened_at=START, reason="2 of 2"), "2 of 2"))
    records = fleet.records()
    steps = [r.event.data["phase"] for r in records if r.event.kind is EventKind.REPLACEMENT_STEP]
    assert steps == [
        Phase.RECORDED.value,
        Phase.LAUNCHING.value,
        Phase.WAITING_CONFORMANT.value,
        Phase.TERMINATING_OLD.value,
        Phase.DONE.value,
    ]
    assert transitions(records, "i-1")[-2:] == [("tainted", "replacing"), ("replacing", "retired")]
    assert transitions(records, new_id) == [(None, "pending"), ("pending", "conformant")]
    launched = next(r for r in records if r.event.instance_id == new_id)
    assert launched.event.related_instance_id == "i-1" and launched.event.actor == "controller"
    breaker = records[-1]
    assert breaker.event.kind is EventKind.BREAKER_OPEN and breaker.event.group == "web"
    history = fleet.store.audit_log().instance_history("i-1")
    assert history.retired_ms is not None
    assert any(r.event.related_instance_id == new_id for r in history.records)
    assert fleet.store.audit_log().verify().ok


def test_conformance_at_past_moments_matches_the_history_played(fleet: Fleet) -> None:
    """A scripted fleet history through the real service; the log answers for each moment."""
    v1, v2 = fleet.image("1"), fleet.image("2")
    fleet.group(v1)
    moments: dict[str, int] = {}

    def mark(name: str) -> None:
        moments[name] = ms(fleet.clock())
        fleet.clock.advance(10)

    mark("empty")
    fleet.report("i-1", v1, seq=1)
    fleet.report("i-2", v1, seq=1)
    mark("two conformant")
    fleet.report("i-2", v1, seq=2, drifted=True)
    mark("one drifted")
    rollout_group(fleet.store, "web", v2.ref, actor="carol", clock=fleet.clock)
    fleet.report("i-3", v2, seq=1)
    fleet.service.taint("i-1", reason="rotate", actor="carol")
    mark("rolled out")
    fleet.clock.advance(100)
    fleet.service.sweep_stale()
    mark("silent")

    def at(name: str) -> dict[str, tuple[str, str]]:
        result = fleet.store.audit_log().conformance_at(moments[name])
        return {i.instance_id: (i.state, i.image) for i in result.instances}

    assert at("empty") == {}
    assert at("two conformant") == {"i-1": ("conformant", v1.ref), "i-2": ("conformant", v1.ref)}
    assert at("one drifted") == {"i-1": ("conformant", v1.ref), "i-2": ("tainted", v1.ref)}
    assert at("rolled out") == {
        "i-1": ("tainted", v1.ref),
        "i-2": ("tainted", v1.ref),
        "i-3": ("conformant", v2.ref),
    }
    assert at("silent")["i-3"] == ("unknown", v2.ref)
    ratio = fleet.store.audit_log().conformance_at(moments["one drifted"]).ratio
    assert ratio == 0.5
    # The answers come from the log, not from current state: current state is all non-conformant.
    current = {i.id: i.state for i in fleet.store.list_instances()}
    assert InstanceState.CONFORMANT not in current.values()
    assert fleet.store.audit_log().verify().ok


# A failing audit append leaves the state as it was ----------------------------------


class _FailingLog(MemoryAuditLog):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def append_all(self, events: object) -> list[Record]:
        if self.fail:
            raise AuditError("injected: the audit log refuses")
        return super().append_all(events)  # type: ignore[arg-type]


def test_memory_store_rolls_back_a_change_whose_audit_append_fails() -> None:
    log = _FailingLog()
    fleet = make_fleet(MemoryStore(audit=log))
    v1 = fleet.image("1")
    fleet.group(v1)
    fleet.report("i-1", v1, seq=1)
    log.fail = True
    with pytest.raises(AuditError):
        fleet.report("i-1", v1, seq=2, drifted=True)
    with pytest.raises(AuditError):
        fleet.service.taint("i-1", reason="x", actor="alice")
    with pytest.raises(AuditError):
        fleet.group(v1, name="db")
    instance = fleet.store.get_instance("i-1")
    assert instance is not None and instance.state is InstanceState.CONFORMANT
    assert fleet.store.get_group("db") is None
    log.fail = False
    fleet.report("i-1", v1, seq=2)  # a heartbeat never needed the log
    assert fleet.store.audit_log().verify().ok


def test_sqlite_store_rolls_back_a_change_whose_audit_append_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data)
    fleet = make_fleet(store)
    v1 = fleet.image("1")
    fleet.group(v1)
    fleet.report("i-1", v1, seq=1)
    real = append_in
    calls: list[Event] = []

    def fail_second(conn: object, event: Event) -> Record:
        calls.append(event)
        if len(calls) == 2:  # the state row and the first record are already written
            raise AuditError("injected: disk full while appending")
        return real(conn, event)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_store, "append_in", fail_second)
    with pytest.raises(ControllerError):
        fleet.report("i-1", v1, seq=2, drifted=True)
    monkeypatch.setattr(sqlite_store, "append_in", real)
    instance = store.get_instance("i-1")
    assert instance is not None and instance.state is InstanceState.CONFORMANT
    head = store.audit_log().head()
    store.close()
    reopened = SqliteStore(data)
    try:
        stored = reopened.get_instance("i-1")
        assert stored is not None and stored.state is InstanceState.CONFORMANT
        assert reopened.audit_log().head() == head
        assert reopened.audit_log().verify().ok
        assert len(list(reopened.audit_log().records())) == 3
    finally:
        reopened.close()
