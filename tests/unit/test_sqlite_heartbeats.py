"""Heartbeats written behind by the SQLite store: what reaches the file, and what is refused.

The flush writes heartbeat-only rows with one narrow UPDATE; these tests reopen the
file to check every heartbeat column landed, that an image change is written whole,
and that a change which must be durable is never accepted behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.manifest.report import Footprint
from controller.domain.model import DriftKind, Instance, InstanceState, Taint
from controller.errors import ControllerError
from controller.store.sqlite import SqliteStore
from tests.fixtures import records

BASE = records.instance(boot_id="boot-1")


def _beat(instance: Instance, n: int) -> Instance:
    return replace(
        instance,
        root=bytes([n]) * 32,
        last_report=2.0 + n,
        seq=3 + n,
        boot_id=f"boot-{n}",
        scanned_at_ms=1500 + n,
        footprint=Footprint(rss_bytes=10 + n, cpu_millis=20 + n),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path)
    opened.add_group(records.GROUP)
    yield opened
    opened.close()  # releases the data dir's lock (a no-op when the test closed it)


def _reopened(store: SqliteStore) -> SqliteStore:
    store.close()
    return SqliteStore(store.path.parent)


def test_heartbeat_columns_of_many_rows_reach_the_file(store: SqliteStore) -> None:
    instances = [store.save_instance(replace(BASE, id=f"i-{k}")) for k in range(50)]
    beats = [_beat(instance, k % 7 + 2) for k, instance in enumerate(instances)]
    saved = [store.save_instance(beat, durable=False) for beat in beats]
    store.flush()
    reopened = _reopened(store)
    read = [reopened.get_instance(b.id) for b in beats]
    assert read == beats
    # The version each heartbeat bumped reached the file too.
    assert [r.version for r in read if r is not None] == [s.version for s in saved]
    reopened.close()


def test_an_image_change_behind_is_written_whole(store: SqliteStore) -> None:
    created = store.save_instance(BASE)
    moved = replace(_beat(created, 4), image_ref="web@sha256:" + "b" * 64, image_digest="sha256:b")
    moved = store.save_instance(moved, durable=False)
    last = store.save_instance(_beat(moved, 5), durable=False)  # a later beat keeps it whole
    reopened = _reopened(store)
    read = reopened.get_instance("i-1")
    assert read == _beat(moved, 5)
    assert read is not None and read.version == last.version
    reopened.close()


def test_a_tainted_instance_keeps_its_taint_through_heartbeats(store: SqliteStore) -> None:
    taint = Taint(kind=DriftKind.FILE, reason="files differ", actor="agent", at=3.0)
    tainted = store.save_instance(replace(BASE, state=InstanceState.TAINTED, taint=taint))
    store.save_instance(_beat(tainted, 2), durable=False)
    reopened = _reopened(store)
    assert reopened.get_instance("i-1") == _beat(tainted, 2)
    reopened.close()


@pytest.mark.parametrize(
    "change",
    [
        {"state": InstanceState.TAINTED},
        {"taint": Taint(kind=DriftKind.MANUAL, reason="by hand", actor="op", at=3.0)},
        {"suspicious": True},
        {"replaces": "i-0"},
        {"first_seen": 0.5},
    ],
)
def test_a_change_that_must_be_durable_is_refused_behind(
    store: SqliteStore, change: dict[str, object]
) -> None:
    created = store.save_instance(BASE)
    with pytest.raises(ControllerError, match="durably"):
        store.save_instance(replace(created, seq=9, **change), durable=False)  # type: ignore[arg-type]
    kept = store.get_instance("i-1")
    assert kept == BASE and kept is not None and kept.version == created.version
    reopened = _reopened(store)
    assert reopened.get_instance("i-1") == BASE
    reopened.close()


def test_a_new_instance_is_refused_behind(store: SqliteStore) -> None:
    with pytest.raises(ControllerError, match="durably"):
        store.save_instance(BASE, durable=False)
    assert store.get_instance("i-1") is None


def test_a_failed_flush_keeps_the_rows_pending(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = store.save_instance(BASE)
    store.save_instance(_beat(created, 2), durable=False)
    monkeypatch.setattr("controller.store.sqlite.HEARTBEAT_UPDATE", "UPDATE nowhere SET x = 1")
    with pytest.raises(Exception, match="nowhere"):
        store.flush()
    monkeypatch.undo()
    reopened = _reopened(store)  # close() flushes what is still pending
    assert reopened.get_instance("i-1") == _beat(BASE, 2)
    reopened.close()
