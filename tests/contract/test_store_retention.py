"""Retired instances leave the live store (every adapter), the audit log keeps their history."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry

from controller.domain.model import Instance, InstanceState
from controller.engine.reports import ControllerService
from controller.metrics import ControllerMetrics
from controller.ports import Store
from tests.fixtures.clock import FakeClock
from tests.fixtures.records import GROUP, IMAGE

DAY = 86400.0


def _stored(store: Store, instance_id: str, state: InstanceState, heard: float) -> Instance:
    store.add_image(IMAGE, b"manifest")
    store.add_group(GROUP)
    return store.save_instance(
        Instance(id=instance_id, group="web", state=state, first_seen=heard, last_report=heard)
    )


def test_only_a_retired_row_as_read_is_deleted(store: Store) -> None:
    retired = _stored(store, "i-old", InstanceState.RETIRED, 1.0)
    live = _stored(store, "i-live", InstanceState.TAINTED, 1.0)
    assert store.delete_retired(live) is False  # tainted: never removed
    stale = replace(retired, version=retired.version - 1)
    assert store.delete_retired(stale) is False  # read before a later write
    assert store.get_instance("i-old") is not None
    assert store.delete_retired(retired) is True
    assert store.get_instance("i-old") is None
    assert store.delete_retired(retired) is False  # gone already
    assert [i.id for i in store.list_instances()] == ["i-live"]


def test_the_sweep_removes_retired_instances_past_the_retention(store: Store) -> None:
    clock = FakeClock(start=10 * DAY)
    service = ControllerService(
        store,
        clock=clock,
        metrics=ControllerMetrics(CollectorRegistry()),
        stale_after=90,
        retired_retention=7 * DAY,
    )
    _stored(store, "i-long-gone", InstanceState.RETIRED, 2 * DAY)
    _stored(store, "i-just-retired", InstanceState.RETIRED, 9 * DAY)
    _stored(store, "i-silent-tainted", InstanceState.TAINTED, 1 * DAY)
    before = len(list(store.audit_log().records()))
    assert service.sweep_retired() == 1
    assert sorted(i.id for i in store.list_instances()) == ["i-just-retired", "i-silent-tainted"]
    assert len(list(store.audit_log().records())) == before  # the history is not touched
    clock.advance(7 * DAY)
    assert service.sweep_retired() == 1
    assert [i.id for i in store.list_instances()] == ["i-silent-tainted"]
