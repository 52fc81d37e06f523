"""Retired instances leave the live store (every adapter), the audit log keeps their history."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.domain.model import Instance, InstanceState
from controller.engine.reports import ControllerService
from controller.metrics import ControllerMetrics
from controller.ports import Store
from controller.store.memory import MemoryStore
from controller.store.sqlite import SqliteStore
from tests.fixtures.clock import FakeClock
from tests.fixtures.postgres import fresh_schema, postgres_dsn
from tests.fixtures.records import GROUP, IMAGE

DAY = 86400.0


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        from controller.store.postgres import PostgresStore  # noqa: PLC0415

        with fresh_schema() as schema:
            adapter: Store = PostgresStore(postgres_dsn(), schema=schema)
            yield adapter
            adapter.close()
        return
    adapter = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path)
    yield adapter
    adapter.close()


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
