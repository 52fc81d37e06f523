"""The replacement engine's plan: each safety rule, on a virtual clock, and under crashes.

The first half walks single replacements through their phases. The second half
runs a simulated shell (a store that survives crashes, an honest provider that
refuses a second launch under one key, agents that conform or not) against
random groups and random event sequences, with crashes injected between every
persisted write and provider call, and checks the invariants at every step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.domain.breaker import BreakerSettings, BreakerState, resume
from controller.domain.model import DriftKind, GroupMode, Instance, InstanceState, Taint
from controller.domain.replacement import (
    ACTIVE_PHASES,
    ReplacementSettings,
    backoff_delay,
    budget,
    instance_view,
    launch_key,
    plan,
    taint_key,
)
from controller.domain.replacement_actions import (
    Abandon,
    Action,
    AdoptLaunch,
    Cancel,
    Complete,
    Discard,
    Hold,
    HoldReason,
    Kind,
    Launch,
    LookupLaunch,
    MarkFailed,
    OpenBreaker,
    Phase,
    StartReplacement,
    Strategy,
    Terminate,
)
from controller.domain.views import GroupView, InstanceView, LaunchLookup, ReplacementView

S = InstanceState
V1 = "web@sha256:" + "1" * 64
V2 = "web@sha256:" + "2" * 64
T0 = 1_000_000.0
DEFAULTS = ReplacementSettings()


def group(
    size: int = 20,
    *,
    mode: GroupMode = GroupMode.ENFORCE,
    strategy: Strategy = Strategy.SURGE,
    image: str = V1,
    **kwargs: Any,
) -> GroupView:
    return GroupView(
        name="web", mode=mode, desired_image=image, strategy=strategy, size=size, **kwargs
    )


def fleet(size: int, *, tainted: int = 0, unknown: int = 0, image: str = V1) -> list[InstanceView]:
    out = []
    for n in range(size):
        if n < tainted:
            out.append(InstanceView(f"i{n:05}", S.TAINTED, image, tainted_at=T0 - n, taint_id="1"))
        elif n < tainted + unknown:
            out.append(InstanceView(f"i{n:05}", S.UNKNOWN, image))
        else:
            out.append(InstanceView(f"i{n:05}", S.CONFORMANT, image))
    return out


def row(phase: Phase, **kwargs: Any) -> ReplacementView:
    fields: dict[str, Any] = {
        "replacement_id": "r1",
        "instance_id": "i00000",
        "kind": Kind.TAINT,
        "idempotency_key": "rpl-i00000-1",
        "strategy": Strategy.SURGE,
        "phase": phase,
    }
    fields.update(kwargs)
    return ReplacementView(**fields)


def starts(actions: list[Action]) -> list[StartReplacement]:
    return [a for a in actions if isinstance(a, StartReplacement)]


# --- budget -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"), [(1, 1), (5, 1), (10, 1), (19, 1), (20, 2), (29, 2), (30, 3), (5000, 500)]
)
def test_default_budget_is_ten_percent_and_never_zero(size: int, expected: int) -> None:
    assert budget(group(size), size, DEFAULTS) == expected


def test_budget_counts_live_instances_when_the_size_is_unknown() -> None:
    assert budget(group(0), 40, DEFAULTS) == 4


def test_an_explicit_budget_overrides_and_zero_is_refused() -> None:
    assert budget(group(20, max_concurrent=7), 20, DEFAULTS) == 7
    with pytest.raises(ValueError, match="at least 1"):
        group(20, max_concurrent=0)


def test_tainted_instances_start_within_the_budget_oldest_first() -> None:
    actions = plan(group(40), fleet(40, tainted=6), [], T0, DEFAULTS)
    # 6/40 = 15%: breaker stays closed; budget 4; oldest taint (largest n) first.
    assert [a.instance_id for a in starts(actions)] == ["i00005", "i00004", "i00003", "i00002"]
    first = starts(actions)[0]
    assert first.kind is Kind.TAINT
    assert first.idempotency_key == "rpl-i00005-1"
    assert first.image_ref == V1 and first.strategy is Strategy.SURGE


def test_in_flight_replacements_of_every_active_phase_use_the_budget() -> None:
    instances = fleet(40, tainted=6)
    in_flight = [
        row(phase, replacement_id=f"r{n}", instance_id=f"i{n:05}", idempotency_key=f"k{n}")
        for n, phase in enumerate(
            [Phase.RECORDED, Phase.BACKOFF, Phase.DONE, Phase.ABANDONED, Phase.CANCELLED]
        )
    ]
    in_flight[1] = replace(in_flight[1], retry_at=T0 + 10, attempt=1)
    actions = plan(group(40), instances, in_flight, T0, DEFAULTS)
    # Budget 4, two in flight: two new ones, never for an instance that has a row.
    assert [a.instance_id for a in starts(actions)] == ["i00005", "i00004"]


def test_a_started_key_is_never_started_again() -> None:
    instances = fleet(20, tainted=1)
    done = row(Phase.ABANDONED, idempotency_key=taint_key(instances[0]))
    assert starts(plan(group(20), instances, [done], T0, DEFAULTS)) == []


def test_a_new_taint_of_the_same_instance_gets_a_new_key() -> None:
    first = InstanceView("i1", S.TAINTED, V1, tainted_at=T0, taint_id="7")
    second = replace(first, taint_id="8")
    assert taint_key(first) != taint_key(second)
    assert taint_key(replace(first, taint_id=None)) == f"rpl-i1-{round(T0 * 1000)}"


# --- modes, silence, breaker --------------------------------------------------


def test_observe_mode_replaces_nothing_and_reports_what_it_would_do() -> None:
    in_flight = [row(Phase.RECORDED)]
    actions = plan(group(20, mode=GroupMode.OBSERVE), fleet(20, tainted=3), in_flight, T0, DEFAULTS)
    assert len(actions) == 1 and isinstance(actions[0], Hold)
    assert actions[0].reason is HoldReason.OBSERVE
    assert actions[0].instances == ("i00002", "i00001")  # i00000 already has a row


def test_observe_mode_with_nothing_to_do_says_nothing() -> None:
    assert plan(group(20, mode=GroupMode.OBSERVE), fleet(20), [], T0, DEFAULTS) == []


def test_unknown_instances_are_never_replaced() -> None:
    instances = fleet(20, unknown=4)  # 20%: not a partition
    actions = plan(group(20), instances, [], T0, DEFAULTS)
    assert actions == []


@pytest.mark.parametrize(("unknown", "holds"), [(4, False), (5, True), (20, True)])
def test_a_partitioned_group_holds_everything(unknown: int, holds: bool) -> None:
    instances = fleet(20, tainted=1, unknown=unknown)
    in_flight = [
        row(
            Phase.WAITING_CONFORMANT,
            instance_id="i00019",
            idempotency_key="rpl-i00019-1",
            attempt=1,
            launch_issued_at=T0 - 10_000,
            new_instance_id="n1",
        )
    ]
    actions = plan(group(20), instances, in_flight, T0, DEFAULTS)
    if holds:
        assert len(actions) == 1 and isinstance(actions[0], Hold)
        assert actions[0].reason is HoldReason.PARTITIONED
    else:
        assert any(isinstance(a, MarkFailed) for a in actions)
        assert len(starts(actions)) == 1


def test_a_silent_replacement_is_failed_by_its_grace_not_counted_as_a_partition() -> None:
    # A group of 3: the victim is being replaced, its new instance never reported
    # (unknown). One unknown of three is over 20%, but the new instance is judged by
    # its startup grace: the attempt fails instead of the whole group holding forever.
    instances = [*fleet(2), InstanceView("n1", S.UNKNOWN, V1)]
    in_flight = [
        row(
            Phase.WAITING_CONFORMANT,
            instance_id="i00001",
            idempotency_key="rpl-i00001-1",
            attempt=1,
            launch_issued_at=T0 - DEFAULTS.startup_grace_seconds - 1,
            new_instance_id="n1",
        )
    ]
    actions = plan(group(3), instances, in_flight, T0, DEFAULTS)
    assert not any(isinstance(a, Hold) for a in actions)
    assert any(isinstance(a, MarkFailed) for a in actions)


def test_six_of_twenty_tainted_at_once_opens_the_breaker_and_starts_nothing() -> None:
    actions = plan(group(20), fleet(20, tainted=6), [], T0, DEFAULTS)
    opened = [a for a in actions if isinstance(a, OpenBreaker)]
    assert len(opened) == 1 and opened[0].state.open
    assert starts(actions) == []


def test_four_of_twenty_is_not_more_than_twenty_percent() -> None:
    actions = plan(group(20), fleet(20, tainted=4), [], T0, DEFAULTS)
    assert not any(isinstance(a, OpenBreaker) for a in actions)
    assert len(starts(actions)) == 2


def test_an_open_breaker_lets_in_flight_replacements_finish() -> None:
    open_state = BreakerState(open=True, opened_at=T0 - 5, reason="6 of 20")
    instances = [*fleet(20, tainted=6), InstanceView("n1", S.CONFORMANT, V1)]
    in_flight = [
        row(Phase.WAITING_CONFORMANT, attempt=1, launch_issued_at=T0, new_instance_id="n1")
    ]
    actions = plan(group(20, breaker=open_state), instances, in_flight, T0, DEFAULTS)
    assert Terminate(replacement_id="r1", instance_id="i00000") in actions
    assert starts(actions) == []
    assert any(isinstance(a, Hold) and a.reason is HoldReason.BREAKER_OPEN for a in actions)


def test_a_resumed_breaker_replaces_the_old_taints_within_budget() -> None:
    opened = BreakerState(open=True, opened_at=T0 - 5, reason="6 of 20")
    resumed = resume(opened, T0)
    actions = plan(group(20, breaker=resumed), fleet(20, tainted=6), [], T0 + 1, DEFAULTS)
    assert not any(isinstance(a, OpenBreaker) for a in actions)
    assert len(starts(actions)) == 2


# --- the phase machine ----------------------------------------------------------


def test_surge_walks_launch_wait_terminate_complete() -> None:
    g = group(20)
    instances = fleet(20, tainted=1)
    recorded = row(Phase.RECORDED)
    assert plan(g, instances, [recorded], T0, DEFAULTS) == [
        Launch(replacement_id="r1", launch_key="rpl-i00000-1-a1", image_ref=V1, attempt=1)
    ]
    waiting = replace(
        recorded,
        phase=Phase.WAITING_CONFORMANT,
        attempt=1,
        launch_issued_at=T0,
        new_instance_id="n1",
    )
    pending = [*instances, InstanceView("n1", S.PENDING, V1)]
    assert plan(g, pending, [waiting], T0 + 5, DEFAULTS) == []
    conformant = [*instances, InstanceView("n1", S.CONFORMANT, V1)]
    assert plan(g, conformant, [waiting], T0 + 6, DEFAULTS) == [
        Terminate(replacement_id="r1", instance_id="i00000")
    ]
    terminated = replace(waiting, phase=Phase.TERMINATING_OLD, old_terminated=True)
    assert plan(g, conformant, [terminated], T0 + 7, DEFAULTS) == [
        Complete(replacement_id="r1", new_instance_id="n1")
    ]


def test_surge_never_terminates_the_old_instance_before_the_new_one_conforms() -> None:
    waiting = row(Phase.WAITING_CONFORMANT, attempt=1, launch_issued_at=T0, new_instance_id="n1")
    for state in (S.PENDING, S.UNKNOWN):
        instances = [*fleet(20, tainted=1), InstanceView("n1", state, V1)]
        for now in (T0, T0 + 599):
            assert plan(group(20), instances, [waiting], now, DEFAULTS) == []


def test_terminate_first_walks_terminate_launch_wait_complete() -> None:
    g = group(20, strategy=Strategy.TERMINATE_FIRST)
    instances = fleet(20, tainted=1)
    recorded = row(Phase.RECORDED, strategy=Strategy.TERMINATE_FIRST)
    assert plan(g, instances, [recorded], T0, DEFAULTS) == [
        Terminate(replacement_id="r1", instance_id="i00000")
    ]
    terminating = replace(recorded, phase=Phase.TERMINATING_OLD)
    assert plan(g, instances, [terminating], T0, DEFAULTS) == [
        Terminate(replacement_id="r1", instance_id="i00000")
    ]
    terminated = replace(terminating, old_terminated=True)
    assert plan(g, instances, [terminated], T0, DEFAULTS) == [
        Launch(replacement_id="r1", launch_key="rpl-i00000-1-a1", image_ref=V1, attempt=1)
    ]
    waiting = replace(
        terminated,
        phase=Phase.WAITING_CONFORMANT,
        attempt=1,
        launch_issued_at=T0,
        new_instance_id="n1",
    )
    conformant = [*instances, InstanceView("n1", S.CONFORMANT, V1)]
    assert plan(g, conformant, [waiting], T0 + 1, DEFAULTS) == [
        Complete(replacement_id="r1", new_instance_id="n1")
    ]


def test_a_launch_in_doubt_is_looked_up_never_repeated_blindly() -> None:
    launching = row(Phase.LAUNCHING, attempt=1, launch_issued_at=T0)
    key = launch_key("rpl-i00000-1", 1)
    instances = fleet(20, tainted=1)
    assert plan(group(20), instances, [launching], T0 + 1, DEFAULTS) == [
        LookupLaunch(replacement_id="r1", launch_key=key)
    ]
    stale = LaunchLookup(launch_key=key, checked_at=T0, instance_id=None)
    assert plan(group(20), instances, [replace(launching, lookup=stale)], T0 + 1, DEFAULTS) == [
        LookupLaunch(replacement_id="r1", launch_key=key)
    ]
    other_key = LaunchLookup(launch_key=key + "x", checked_at=T0 + 1, instance_id=None)
    assert plan(group(20), instances, [replace(launching, lookup=other_key)], T0 + 2, DEFAULTS) == [
        LookupLaunch(replacement_id="r1", launch_key=key)
    ]
    found = LaunchLookup(launch_key=key, checked_at=T0 + 1, instance_id="n9")
    assert plan(group(20), instances, [replace(launching, lookup=found)], T0 + 2, DEFAULTS) == [
        AdoptLaunch(replacement_id="r1", new_instance_id="n9")
    ]
    absent = LaunchLookup(launch_key=key, checked_at=T0 + 1, instance_id=None)
    assert plan(group(20), instances, [replace(launching, lookup=absent)], T0 + 2, DEFAULTS) == [
        Launch(replacement_id="r1", launch_key=key, image_ref=V1, attempt=1)
    ]
    failed = replace(launching, lookup=absent, launch_error="quota exceeded")
    (action,) = plan(group(20), instances, [failed], T0 + 2, DEFAULTS)
    assert isinstance(action, MarkFailed) and "quota exceeded" in action.reason


def test_grace_then_backoff_then_abandon_on_a_virtual_clock() -> None:
    g = group(20)
    instances = [*fleet(20, tainted=1), InstanceView("n1", S.PENDING, V1)]
    r = row(Phase.WAITING_CONFORMANT, attempt=1, launch_issued_at=T0, new_instance_id="n1")
    clock = T0
    retries = []
    for attempt in (1, 2, 3):
        r = replace(
            r,
            phase=Phase.WAITING_CONFORMANT,
            attempt=attempt,
            launch_issued_at=clock,
            new_instance_id="n1",
        )
        assert plan(g, instances, [r], clock + 599.9, DEFAULTS) == []
        clock += 600
        (failed,) = plan(g, instances, [r], clock, DEFAULTS)
        assert isinstance(failed, MarkFailed) and "startup grace" in failed.reason
        r = replace(r, phase=Phase.BACKOFF, retry_at=failed.retry_at)
        assert plan(g, instances, [r], clock, DEFAULTS) == [
            Discard(replacement_id="r1", instance_id="n1")
        ]
        r = replace(r, new_instance_id=None)
        if failed.retry_at is None:
            break
        retries.append(failed.retry_at - clock)
        assert plan(g, instances, [r], failed.retry_at - 0.1, DEFAULTS) == []
        clock = failed.retry_at
        assert plan(g, instances, [r], clock, DEFAULTS) == [
            Launch(
                replacement_id="r1",
                launch_key=f"rpl-i00000-1-a{attempt + 1}",
                image_ref=V1,
                attempt=attempt + 1,
            )
        ]
    assert retries == [30.0, 60.0]
    (abandon,) = plan(g, instances, [r], clock + 10_000, DEFAULTS)
    assert isinstance(abandon, Abandon) and "3 attempt(s)" in abandon.reason


def test_a_new_instance_that_is_tainted_fails_its_attempt_at_once() -> None:
    r = row(Phase.WAITING_CONFORMANT, attempt=1, launch_issued_at=T0, new_instance_id="n1")
    instances = [*fleet(20, tainted=1), InstanceView("n1", S.TAINTED, V1, tainted_at=T0 + 1)]
    actions = plan(group(20), instances, [r], T0 + 2, DEFAULTS)
    failed = [a for a in actions if isinstance(a, MarkFailed)]
    assert len(failed) == 1 and failed[0].retry_at == T0 + 2 + 30
    assert all(a.instance_id != "n1" for a in starts(actions))


def test_a_tainted_replacement_is_replaced_like_any_other_within_budget() -> None:
    done = row(Phase.DONE, attempt=1, new_instance_id="n1")
    instances = [
        InstanceView("i00000", S.RETIRED, V1, tainted_at=T0 - 100, taint_id="1"),
        *fleet(20)[1:],
        InstanceView("n1", S.TAINTED, V1, tainted_at=T0, taint_id="2"),
    ]
    (start,) = starts(plan(group(20, max_concurrent=1), instances, [done], T0, DEFAULTS))
    assert start.instance_id == "n1" and start.idempotency_key == "rpl-n1-2"


@pytest.mark.parametrize(
    ("failed", "delay"), [(1, 30), (2, 60), (3, 120), (6, 960), (7, 1800), (500, 1800)]
)
def test_backoff_is_exponential_and_capped(failed: int, delay: float) -> None:
    assert backoff_delay(failed, DEFAULTS) == delay


# --- rollout -------------------------------------------------------------------


def test_instances_on_another_image_are_rolled_within_budget() -> None:
    instances = [*fleet(18, image=V1), InstanceView("p", S.PENDING, V1)]
    instances.append(InstanceView("u", S.UNKNOWN, V1))
    actions = plan(group(20, image=V2, generation=3), instances, [], T0, DEFAULTS)
    assert [(a.instance_id, a.kind, a.idempotency_key) for a in starts(actions)] == [
        ("i00000", Kind.ROLLOUT, "rol-i00000-g3"),
        ("i00001", Kind.ROLLOUT, "rol-i00001-g3"),
    ]
    assert all(a.image_ref == V2 for a in starts(actions))


def test_the_same_image_under_another_name_needs_no_rollout() -> None:
    same_digest = "mirror.example.com/web:v1@sha256:" + "1" * 64
    assert plan(group(20, image=same_digest), fleet(20), [], T0, DEFAULTS) == []


def test_taints_come_before_rollouts() -> None:
    instances = [*fleet(19, image=V1), InstanceView("z", S.TAINTED, V2, tainted_at=T0)]
    (start,) = starts(plan(group(20, image=V2, max_concurrent=1), instances, [], T0, DEFAULTS))
    assert start.instance_id == "z" and start.kind is Kind.TAINT


def test_a_rollback_cancels_rollout_replacements_not_yet_begun() -> None:
    recorded = row(Phase.RECORDED, kind=Kind.ROLLOUT, idempotency_key="rol-i00000-g1")
    actions = plan(group(20, image=V1, generation=2), fleet(20), [recorded], T0, DEFAULTS)
    assert actions == [
        Cancel(replacement_id="r1", reason="instance already runs the desired image")
    ]


def test_a_launch_always_uses_the_current_desired_image() -> None:
    recorded = row(Phase.RECORDED)
    (launch,) = plan(
        group(20, image=V2, max_concurrent=1), fleet(20, tainted=1), [recorded], T0, DEFAULTS
    )
    assert isinstance(launch, Launch) and launch.image_ref == V2


def test_instance_view_reads_a_stored_instance() -> None:
    taint = Taint(kind=DriftKind.FILE, reason="x", actor="agent", at=T0)
    stored = Instance(id="i1", group="web", state=S.TAINTED, image_digest="sha256:" + "1" * 64)
    view = instance_view(replace(stored, taint=taint))
    assert (view.instance_id, view.state, view.tainted_at) == ("i1", S.TAINTED, T0)
    assert view.image == "sha256:" + "1" * 64


# --- a simulated shell under random events and crashes ---------------------------


class CrashError(Exception):
    """The controller died here."""


@dataclass
class SimInstance:
    state: InstanceState
    image: str
    tainted_at: float | None = None
    taint_id: str | None = None
    conform_at: float | None = None
    taint_at: float | None = None


@dataclass
class Sim:
    """A store, a provider and agents, driven by a real plan() and killed at chosen points."""

    size: int
    strategy: Strategy
    mode: GroupMode = GroupMode.ENFORCE
    max_concurrent: int | None = None
    config: ReplacementSettings = DEFAULTS
    crash_points: frozenset[int] = frozenset()
    fates: tuple[str, ...] = ("ok",)
    now: float = T0
    image: str = V1
    generation: int = 0
    breaker: BreakerState = field(default_factory=BreakerState)
    instances: dict[str, SimInstance] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    provider: dict[str, str] = field(default_factory=dict)
    lookups: dict[str, LaunchLookup] = field(default_factory=dict)
    points: int = 0
    launches: int = 0
    crashes: int = 0
    completed_old: list[str] = field(default_factory=list)
    actions_seen: int = 0

    def __post_init__(self) -> None:
        for n in range(self.size):
            self.instances[f"i{n}"] = SimInstance(S.CONFORMANT, self.image)
        self.fate_cycle = itertools.cycle(self.fates)

    # views ---------------------------------------------------------------
    def group(self) -> GroupView:
        return GroupView(
            name="web",
            mode=self.mode,
            desired_image=self.image,
            strategy=self.strategy,
            size=self.size,
            generation=self.generation,
            max_concurrent=self.max_concurrent,
            breaker=self.breaker,
        )

    def views(self) -> tuple[list[InstanceView], list[ReplacementView]]:
        instances = [
            InstanceView(iid, i.state, i.image, tainted_at=i.tainted_at, taint_id=i.taint_id)
            for iid, i in self.instances.items()
        ]
        rows = [ReplacementView(**r, lookup=self.lookups.get(rid)) for rid, r in self.rows.items()]
        return instances, rows

    def active(self) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["phase"] in ACTIVE_PHASES]

    # the world -----------------------------------------------------------
    def taint(self, pick: int) -> None:
        conformant = sorted(k for k, i in self.instances.items() if i.state is S.CONFORMANT)
        if conformant:
            inst = self.instances[conformant[pick % len(conformant)]]
            inst.state, inst.tainted_at, inst.taint_id = S.TAINTED, self.now, str(self.now)

    def silence(self, pick: int) -> None:
        conformant = sorted(k for k, i in self.instances.items() if i.state is S.CONFORMANT)
        if conformant:
            self.instances[conformant[pick % len(conformant)]].state = S.UNKNOWN

    def wake_all(self) -> None:
        for inst in self.instances.values():
            if inst.state is S.UNKNOWN:
                inst.state = S.CONFORMANT

    def agents(self) -> None:
        for iid, inst in self.instances.items():
            if inst.state is not S.PENDING:
                continue
            if inst.taint_at is not None and inst.taint_at <= self.now:
                inst.state, inst.tainted_at, inst.taint_id = S.TAINTED, self.now, f"t{iid}"
            elif inst.conform_at is not None and inst.conform_at <= self.now:
                inst.state = S.CONFORMANT

    # the shell -----------------------------------------------------------
    def point(self) -> None:
        self.points += 1
        if self.points in self.crash_points:
            raise CrashError

    def persist(self, rid: str, **changes: Any) -> None:
        self.point()
        self.rows[rid].update(changes)

    def tick(self, seconds: float) -> list[Action]:
        self.now += seconds
        self.agents()
        instances, rows = self.views()
        actions = plan(self.group(), instances, rows, self.now, self.config)
        self.check_plan(actions)
        try:
            for action in actions:
                self.apply(action)
        except CrashError:
            self.crashes += 1
            self.lookups.clear()  # memory is lost; the store survives
        self.check_store()
        return actions

    def check_plan(self, actions: list[Action]) -> None:
        self.actions_seen += len(actions)
        if self.mode is GroupMode.OBSERVE:
            assert all(isinstance(a, Hold) for a in actions)
        touched = [a.replacement_id for a in actions if hasattr(a, "replacement_id")]
        assert len(touched) == len(set(touched)), "two actions for one replacement"
        started = [a.instance_id for a in starts(actions)]
        assert len(started) == len(set(started))
        busy = {r["instance_id"] for r in self.active()}
        busy |= {r["new_instance_id"] for r in self.active() if r["new_instance_id"]}
        for iid in started:
            assert iid not in busy, f"{iid} replaced twice concurrently"
            assert self.instances[iid].state in (S.TAINTED, S.CONFORMANT), "replaced a silent one"
        if self.breaker.open:
            assert started == []

    def check_store(self) -> None:
        limit = budget(self.group(), self.size, self.config)
        assert len(self.active()) <= limit, "budget exceeded"
        old = [r["instance_id"] for r in self.active()]
        assert len(old) == len(set(old))
        assert len(self.completed_old) == len(set(self.completed_old)), "replaced twice"

    def apply(self, action: Action) -> None:
        if isinstance(action, StartReplacement):
            self.point()
            if action.idempotency_key in self.keys:
                return
            rid = f"r{len(self.rows)}"
            self.rows[rid] = {
                "replacement_id": rid,
                "instance_id": action.instance_id,
                "kind": action.kind,
                "idempotency_key": action.idempotency_key,
                "strategy": action.strategy,
                "phase": Phase.RECORDED,
                "attempt": 0,
                "launch_issued_at": None,
                "new_instance_id": None,
                "old_terminated": False,
                "launch_error": None,
                "retry_at": None,
            }
            self.keys.add(action.idempotency_key)
            if self.instances[action.instance_id].state is S.TAINTED:
                self.instances[action.instance_id].state = S.REPLACING
        elif isinstance(action, Launch):
            rid = action.replacement_id
            self.persist(
                rid,
                phase=Phase.LAUNCHING,
                attempt=action.attempt,
                launch_issued_at=self.now,
                launch_error=None,
                new_instance_id=None,
            )
            self.point()
            fate = next(self.fate_cycle)
            if fate == "error":
                self.persist(rid, launch_error="provider said no")
                return
            assert action.launch_key not in self.provider, "second launch under one key"
            self.launches += 1
            new_id = f"n{self.launches}"
            self.instances[new_id] = SimInstance(
                S.PENDING,
                action.image_ref,
                conform_at=self.now + 30 if fate in ("ok", "lost_reply") else None,
                taint_at=self.now + 30 if fate == "bad" else None,
            )
            self.provider[action.launch_key] = new_id
            if fate == "lost_reply":
                self.persist(rid, launch_error="timeout")
                return
            self.persist(rid, new_instance_id=new_id, phase=Phase.WAITING_CONFORMANT)
        elif isinstance(action, LookupLaunch):
            self.point()
            self.lookups[action.replacement_id] = LaunchLookup(
                action.launch_key, self.now, self.provider.get(action.launch_key)
            )
        elif isinstance(action, AdoptLaunch):
            self.persist(
                action.replacement_id,
                new_instance_id=action.new_instance_id,
                phase=Phase.WAITING_CONFORMANT,
            )
        elif isinstance(action, Terminate):
            r = self.rows[action.replacement_id]
            if r["strategy"] is Strategy.SURGE:
                new = self.instances[r["new_instance_id"]]
                assert new.state is S.CONFORMANT, "old instance terminated before new conformed"
            self.persist(action.replacement_id, phase=Phase.TERMINATING_OLD)
            self.point()
            self.instances[action.instance_id].state = S.RETIRED
            self.persist(action.replacement_id, old_terminated=True)
        elif isinstance(action, MarkFailed):
            self.persist(action.replacement_id, phase=Phase.BACKOFF, retry_at=action.retry_at)
        elif isinstance(action, Discard):
            self.point()
            self.instances[action.instance_id].state = S.RETIRED
            self.persist(action.replacement_id, new_instance_id=None)
        elif isinstance(action, Abandon):
            self.persist(action.replacement_id, phase=Phase.ABANDONED)
            old = self.instances[action.instance_id]
            if old.state is S.REPLACING:
                old.state = S.TAINTED
        elif isinstance(action, Cancel):
            self.persist(action.replacement_id, phase=Phase.CANCELLED)
        elif isinstance(action, Complete):
            self.persist(action.replacement_id, phase=Phase.DONE)
            self.completed_old.append(self.rows[action.replacement_id]["instance_id"])
        elif isinstance(action, OpenBreaker):
            self.point()
            self.breaker = action.state
        else:
            assert isinstance(action, Hold)

    def drain(self, *, step: float = 60.0, limit: int = 2000, crashes: bool = False) -> None:
        """No more events (nor crashes, unless asked): every replacement must reach an end."""
        if not crashes:
            self.crash_points = frozenset()
        self.wake_all()
        for _ in range(limit):
            self.tick(step)
            if not self.active() and not self.pending_taints():
                return
        raise AssertionError(f"replacements stuck: {self.active()}")

    def pending_taints(self) -> list[str]:
        if self.breaker.open or self.mode is GroupMode.OBSERVE:
            return []
        keyed = {r["idempotency_key"] for r in self.rows.values()}
        return [
            iid
            for iid, i in self.instances.items()
            if i.state is S.TAINTED
            and taint_key(InstanceView(iid, i.state, tainted_at=i.tainted_at, taint_id=i.taint_id))
            not in keyed
        ]


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("taint"), st.integers(0, 10_000)),
        st.tuples(st.just("silence"), st.integers(0, 10_000)),
        st.tuples(st.just("wake"), st.just(0)),
        st.tuples(st.just("tick"), st.sampled_from([1, 5, 31, 61, 300, 601, 1900])),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("rollout"), st.just(0)),
    ),
    max_size=60,
)
FATES = st.lists(st.sampled_from(["ok", "never", "bad", "error", "lost_reply"]), min_size=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 60),
    strategy=st.sampled_from(list(Strategy)),
    max_concurrent=st.none() | st.integers(1, 5),
    events=EVENTS,
    fates=FATES,
    crash_points=st.frozensets(st.integers(1, 400), max_size=12),
    observe=st.booleans(),
)
def test_random_fleets_keep_every_invariant_and_finish(
    size: int,
    strategy: Strategy,
    max_concurrent: int | None,
    events: list[tuple[str, int]],
    fates: list[str],
    crash_points: frozenset[int],
    observe: bool,
) -> None:
    sim = Sim(
        size=size,
        strategy=strategy,
        max_concurrent=max_concurrent,
        mode=GroupMode.OBSERVE if observe else GroupMode.ENFORCE,
        crash_points=crash_points,
        fates=tuple(fates),
    )
    for kind, arg in events:
        if kind == "taint":
            sim.taint(arg)
        elif kind == "silence":
            sim.silence(arg)
        elif kind == "wake":
            sim.wake_all()
        elif kind == "resume":
            sim.breaker = resume(sim.breaker, sim.now)
        elif kind == "rollout":
            sim.image = V2 if sim.image == V1 else V1
            sim.generation += 1
        sim.tick(arg if kind == "tick" else 1)
    sim.drain()
    if observe:
        assert sim.rows == {} and sim.launches == 0
    # Exactly one replacement per taint key, and one launch per launch key.
    assert len(sim.keys) == len(sim.rows)


def test_a_crash_at_every_step_still_completes_exactly_one_replacement() -> None:
    for strategy in Strategy:
        for fates in (("ok",), ("lost_reply", "ok"), ("error", "never", "ok")):
            clean = Sim(size=10, strategy=strategy, fates=fates)
            clean.taint(0)
            clean.drain(step=7.0, limit=500)
            assert clean.points >= 6
            for crash_at in range(1, clean.points + 1):
                sim = Sim(
                    size=10,
                    strategy=strategy,
                    crash_points=frozenset({crash_at}),
                    fates=fates,
                )
                sim.taint(0)
                sim.drain(step=7.0, limit=500, crashes=True)
                assert sim.crashes == 1, (strategy, fates, crash_at)
                assert sim.completed_old == ["i0"], (strategy, fates, crash_at)
                done = [r for r in sim.rows.values() if r["phase"] is Phase.DONE]
                assert len(done) == 1
                # Every launch key reached the provider at most once (Sim asserts it),
                # and every instance launched is either the survivor or discarded.
                alive = [
                    iid
                    for iid, i in sim.instances.items()
                    if iid.startswith("n") and i.state is not S.RETIRED
                ]
                assert alive == [done[0]["new_instance_id"]]


def test_replaying_the_same_stored_state_never_launches_again() -> None:
    sim = Sim(size=10, strategy=Strategy.SURGE)
    sim.taint(0)
    sim.tick(1)  # start
    sim.tick(1)  # launch
    (stored,) = sim.rows.values()
    assert stored["phase"] is Phase.WAITING_CONFORMANT
    # The controller died after the launch but before recording it.
    sim.rows[stored["replacement_id"]].update(phase=Phase.LAUNCHING, new_instance_id=None)
    for _ in range(5):
        actions = sim.tick(1)
        assert not any(isinstance(a, Launch) for a in actions)
    assert sim.launches == 1


def test_twenty_instances_six_tainted_never_more_than_the_budget_in_flight() -> None:
    sim = Sim(
        size=20,
        strategy=Strategy.SURGE,
        config=ReplacementSettings(breaker=BreakerSettings(enabled=False)),
    )
    for n in range(6):
        sim.taint(n)
    peak = 0
    for _ in range(200):
        sim.tick(10)
        peak = max(peak, len(sim.active()))
        if len(sim.completed_old) == 6:
            break
    assert peak == 2 and len(sim.completed_old) == 6


def test_thousands_of_instances_plan_within_budget() -> None:
    size = 5000
    instances = fleet(size, tainted=900, unknown=900)
    config = ReplacementSettings(breaker=BreakerSettings(enabled=False))
    actions = plan(group(size), instances, [], T0, config)
    started = starts(actions)
    assert len(started) == 500
    assert {a.instance_id for a in started} <= {i.instance_id for i in instances[:900]}


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 3000),
    states=st.lists(st.sampled_from(list(InstanceState)), min_size=1, max_size=3000),
    active=st.integers(0, 400),
)
def test_one_plan_over_a_large_random_group_respects_every_rule(
    size: int, states: list[InstanceState], active: int
) -> None:
    instances = [
        InstanceView(
            f"i{n}",
            state,
            V1 if n % 3 else V2,
            tainted_at=T0 - n if state in (S.TAINTED, S.REPLACING, S.RETIRED) else None,
        )
        for n, state in enumerate(states)
    ]
    rows = [
        row(
            Phase.RECORDED,
            replacement_id=f"r{n}",
            instance_id=f"i{n}",
            idempotency_key=f"k{n}",
        )
        for n in range(min(active, len(instances)))
    ]
    config = ReplacementSettings(breaker=BreakerSettings(enabled=False))
    g = group(size)
    actions = plan(g, instances, rows, T0, config)
    by_id = {i.instance_id: i for i in instances}
    started = starts(actions)
    assert len(rows) + len(started) <= max(budget(g, size, config), len(rows))
    assert len({a.instance_id for a in started}) == len(started)
    for action in started:
        assert by_id[action.instance_id].state in (S.TAINTED, S.CONFORMANT)
        assert action.instance_id not in {r.instance_id for r in rows}
