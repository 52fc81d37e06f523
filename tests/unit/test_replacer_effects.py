"""The replacement shell after a crash: what a lookup finds is finished, not just adopted."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from controller.domain.model import DriftKind, Group, GroupMode, Instance, InstanceState, Taint
from controller.domain.replacement_actions import (
    Action,
    AdoptLaunch,
    Kind,
    Launch,
    LookupLaunch,
    Phase,
    StartReplacement,
    Strategy,
)
from controller.engine.effects import Effects
from controller.metrics import ControllerMetrics
from controller.providers import LaunchSpec, Provider
from controller.providers.base import InstanceState as ProviderState
from controller.providers.base import LaunchedInstance, ReplacementStrategy
from controller.store.memory import MemoryStore
from tests.fixtures.clock import FakeClock

IMAGE = "app@sha256:" + "a" * 64
KEY = "rpl-i-1-1"


class _Crash(BaseException):
    """The controller dies inside the provider call."""


class _Provider(Provider):
    """Holds what it launched by key; ``crash`` kills the caller mid-launch."""

    name = "fake"
    replacement_strategy = ReplacementStrategy.SURGE

    def __init__(self) -> None:
        self.crash = False
        self.launches: list[str] = []
        self.held: dict[str, LaunchedInstance] = {}

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        self.launches.append(spec.idempotency_key)
        instance = self.held.setdefault(
            spec.idempotency_key,
            LaunchedInstance(
                spec.instance_id,
                spec.group,
                ProviderState.RUNNING,
                idempotency_key=spec.idempotency_key,
            ),
        )
        if self.crash:
            raise _Crash  # created, but the caller never learns it (nor finishes it)
        return instance

    def terminate(self, instance_id: str) -> None:
        pass

    def list(self, group: str) -> list[LaunchedInstance]:
        return list(self.held.values())

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        return None


def test_a_launch_found_after_a_crash_is_launched_again_under_its_key() -> None:
    store, clock, provider = MemoryStore(), FakeClock(), _Provider()
    group = Group(name="web", desired_image_ref=IMAGE, mode=GroupMode.ENFORCE)
    store.add_group(group)
    taint = Taint(kind=DriftKind.FILE, reason="drift", actor="agent", at=clock())
    store.save_instance(Instance(id="i-1", group="web", state=InstanceState.TAINTED, taint=taint))

    def effects() -> Effects:
        metrics = ControllerMetrics(CollectorRegistry())
        return Effects(store, clock=clock, metrics=metrics, controller_address="127.0.0.1:1")

    def apply(shell: Effects, action: Action) -> None:
        asyncio.run(shell.apply(action, group=group, provider=provider))

    before = effects()
    apply(before, StartReplacement("web", "i-1", Kind.TAINT, KEY, Strategy.SURGE, IMAGE))
    provider.crash = True
    with pytest.raises(_Crash):
        apply(before, Launch(KEY, f"{KEY}-a1", IMAGE, 1))
    row = store.get_replacement(KEY)
    assert row is not None and row.phase is Phase.LAUNCHING and row.new_instance_id is None

    provider.crash = False
    after = effects()  # a restarted controller: nothing in memory
    clock.advance(1)
    apply(after, LookupLaunch(KEY, f"{KEY}-a1"))
    found = after.lookups[KEY].instance_id
    assert found is not None
    apply(after, AdoptLaunch(KEY, found))
    assert provider.launches == [f"{KEY}-a1", f"{KEY}-a1"]  # the same key: find, not create
    assert len(provider.held) == 1
    row = store.get_replacement(KEY)
    assert row is not None and row.phase is Phase.WAITING_CONFORMANT
    assert row.new_instance_id == found
    new = store.get_instance(found)
    assert new is not None and new.state is InstanceState.PENDING and new.replaces == "i-1"
