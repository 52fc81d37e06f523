"""Which groups a replacer tick plans: nudged ones, ones with work in flight, all on a sweep.

Planning reads a whole group, so a fleet that conforms must not be planned on
every tick (at 60,000 instances that starves report ingest).
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from controller.domain.model import Group, GroupMode
from controller.engine.replacer import Replacer, ReplacerSettings
from controller.metrics import ControllerMetrics
from controller.store.memory import MemoryStore
from tests.fixtures.clock import FakeClock

GROUPS = ("api", "batch", "web")


class _Recorder(Replacer):
    """A replacer whose per-group step only records that the group was planned."""

    def __init__(self, store: MemoryStore, clock: FakeClock) -> None:
        super().__init__(
            store,
            clock=clock,
            metrics=ControllerMetrics(CollectorRegistry()),
            providers={},
            controller_address="127.0.0.1:1",
            settings=ReplacerSettings(tick_seconds=1.0, sweep_seconds=30.0, nudge_delay=0.01),
        )
        self.planned: list[str] = []
        self.in_flight: set[str] = set()

    async def _tick_group(self, name: str) -> bool:
        self.planned.append(name)
        return name in self.in_flight


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def replacer(clock: FakeClock) -> _Recorder:
    store = MemoryStore()
    for name in GROUPS:
        store.add_group(Group(name=name, desired_image_ref="x", mode=GroupMode.ENFORCE))
    return _Recorder(store, clock)


def _tick(replacer: _Recorder) -> list[str]:
    replacer.planned.clear()
    asyncio.run(replacer.tick())
    return sorted(replacer.planned)


def test_the_first_tick_sweeps_every_group_then_quiet_groups_are_left_alone(
    replacer: _Recorder, clock: FakeClock
) -> None:
    assert _tick(replacer) == list(GROUPS)
    clock.advance(1)
    assert _tick(replacer) == []


def test_a_nudged_group_is_planned_on_the_next_tick_only(
    replacer: _Recorder, clock: FakeClock
) -> None:
    _tick(replacer)
    replacer.nudge("web")  # no running loop here: the nudge waits for the tick
    clock.advance(1)
    assert _tick(replacer) == ["web"]
    assert _tick(replacer) == []


def test_a_group_with_a_replacement_in_flight_is_planned_every_tick_until_done(
    replacer: _Recorder, clock: FakeClock
) -> None:
    replacer.in_flight = {"batch"}
    _tick(replacer)
    for _ in range(3):
        clock.advance(1)
        assert _tick(replacer) == ["batch"]
    replacer.in_flight = set()
    assert _tick(replacer) == ["batch"]
    assert _tick(replacer) == []


def test_every_group_is_swept_once_per_sweep_interval(
    replacer: _Recorder, clock: FakeClock
) -> None:
    _tick(replacer)
    clock.advance(29)
    assert _tick(replacer) == []
    clock.advance(1)
    assert _tick(replacer) == list(GROUPS)


def test_an_empty_nudge_plans_every_group(replacer: _Recorder) -> None:
    _tick(replacer)
    replacer.nudge()
    assert _tick(replacer) == list(GROUPS)


def test_a_storm_of_nudges_plans_each_group_once(replacer: _Recorder) -> None:
    _tick(replacer)
    replacer.planned.clear()

    async def storm() -> None:
        for n in range(1000):  # a thousand agents registering at once
            replacer.nudge(GROUPS[n % 2])
        await asyncio.sleep(0.1)

    asyncio.run(storm())
    assert sorted(replacer.planned) == ["api", "batch"]


def test_nudges_during_a_tick_are_planned_after_it(
    replacer: _Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tick(replacer)
    replacer.planned.clear()
    original = replacer._tick_group

    async def slow(name: str) -> bool:
        replacer.nudge("web")  # a report arrives while this group is planned
        await asyncio.sleep(0)
        return await original(name)

    monkeypatch.setattr(replacer, "_tick_group", slow)

    async def run() -> None:
        replacer.nudge("api")
        await asyncio.sleep(0.1)

    asyncio.run(run())
    assert replacer.planned[:2] == ["api", "web"]
