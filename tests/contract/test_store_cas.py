"""The stores' compare-and-set, as properties: memory, SQLite and PostgreSQL (``postgres``).

Every write of an instance, a group or a replacement carries the version it was
read at; a write from a stale read raises ConflictError and changes nothing —
neither the row nor the audit log. Three properties:

- a stale write of each kind (a durable instance save, a heartbeat written
  behind, a group update, a replacement update) conflicts and changes nothing;
- any interleaving of several writers' reads and writes (taint, staleness
  sweep, heartbeat, conformant report, as the domain makes them: read, decide,
  write) is exactly what a model of the compare-and-set predicts, and a
  tainted instance never goes back;
- writers racing for real (threads on one memory or SQLite store, one
  PostgresStore each on one schema): the successful writes are exactly the
  versions stored, one after another, and nothing follows a taint but a taint.

And the database itself refuses a raw ``UPDATE`` that takes a tainted or retired
instance back (SQLite and PostgreSQL triggers).
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.audit import Event
from controller.audit.record import EventKind
from controller.domain.model import DriftKind, Instance, InstanceState, Taint
from controller.domain.replacement_actions import Phase
from controller.errors import ConflictError
from controller.ports import Store
from controller.store.memory import MemoryStore
from controller.store.sqlite import SqliteStore
from tests.fixtures.postgres import connect, fresh_schema, postgres_dsn
from tests.fixtures.records import GROUP, IMAGE, instance, replacement

FINAL = (InstanceState.TAINTED, InstanceState.REPLACING, InstanceState.RETIRED)
"""States a row never leaves for one outside this set (retired: never leaves at all)."""
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ids = itertools.count()


@dataclass
class Backend:
    """One store under test and, for racing, more writers on the same data."""

    kind: str
    store: Store
    tmp: Path
    schema: str = ""
    extra: list[Store] = field(default_factory=list)

    def writers(self, count: int) -> list[Store]:
        """``count`` writers: the one store shared (memory, SQLite: one owner per file) or
        one PostgresStore (its own connection) each."""
        if self.kind != "postgres":
            return [self.store] * count
        from controller.store.postgres import PostgresStore  # noqa: PLC0415

        while len(self.extra) < count - 1:
            self.extra.append(PostgresStore(postgres_dsn(), schema=self.schema))
        return [self.store, *self.extra[: count - 1]]

    def raw_row(self, instance_id: str) -> tuple[str, int] | None:
        """``(state, version)`` of the instance as stored in the database (None: memory)."""
        if self.kind == "sqlite":
            db = sqlite3.connect(f"file:{self.tmp / 'corral.db'}?mode=ro", uri=True)
            try:
                row = db.execute(
                    "SELECT state, version FROM instances WHERE id = ?", (instance_id,)
                ).fetchone()
            finally:
                db.close()
        elif self.kind == "postgres":
            with connect(self.schema) as conn:
                row = conn.execute(
                    "SELECT state, version FROM instances WHERE id = %s", (instance_id,)
                ).fetchone()
        else:
            return None
        assert row is not None
        return str(row[0]), int(row[1])


@contextmanager
def _opened(kind: str, tmp_path: Path) -> Iterator[Backend]:
    if kind == "postgres":
        from controller.store.postgres import PostgresStore  # noqa: PLC0415

        with fresh_schema() as schema:
            made = Backend("postgres", PostgresStore(postgres_dsn(), schema=schema), tmp_path)
            made.schema = schema
            try:
                _declare(made.store)
                yield made
            finally:
                for store in (made.store, *made.extra):
                    store.close()
        return
    adapter: Store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path)
    made = Backend(kind, adapter, tmp_path)
    try:
        _declare(adapter)
        yield made
    finally:
        adapter.close()


POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with _opened(request.param, tmp_path) as made:
        yield made


@pytest.fixture(params=["sqlite", POSTGRES])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with _opened(request.param, tmp_path) as made:
        yield made


def _declare(store: Store) -> None:
    store.add_image(IMAGE, b"manifest")
    store.add_group(GROUP)


def _fresh_id() -> str:
    return f"i-{next(_ids)}"


def _event(kind: EventKind, instance_id: str, reason: str) -> Event:
    return Event(kind=kind, at_ms=1_000, actor="test", reason=reason, instance_id=instance_id)


def _taint(at: float) -> Taint:
    return Taint(kind=DriftKind.FILE, reason="files differ", actor="agent", at=at)


def _audit_seq(store: Store) -> int:
    return store.audit_log().head().seq


# -- the writers, as the domain writes: read, decide, write ---------------------------


Decision = tuple[Instance, bool, tuple[Event, ...]] | None
"""What a writer writes from what it read: (the new row, durable, audit events); None: nothing."""


def decide(action: str, read: Instance) -> Decision:
    """The write ``action`` makes from the row it ``read`` (None when it leaves the row)."""
    seq = read.seq + 1
    if action == "taint":
        if read.state in FINAL:
            return None
        row = replace(read, state=InstanceState.TAINTED, taint=_taint(float(seq)), seq=seq)
        return row, True, (_event(EventKind.TAINT, read.id, "files differ"),)
    if action == "sweep":
        if read.state not in (InstanceState.CONFORMANT, InstanceState.PENDING):
            return None
        row = replace(read, state=InstanceState.UNKNOWN)
        return row, True, (_event(EventKind.INSTANCE_STATE, read.id, "silent"),)
    if action == "heartbeat":  # same state, newer report: written behind
        return replace(read, seq=seq, last_report=float(seq)), False, ()
    if action == "conformant":
        if read.state in FINAL:  # a report never clears a taint
            return replace(read, seq=seq, last_report=float(seq)), False, ()
        row = replace(read, state=InstanceState.CONFORMANT, seq=seq, last_report=float(seq))
        if read.state is InstanceState.CONFORMANT:
            return row, False, ()
        return row, True, (_event(EventKind.INSTANCE_STATE, read.id, "reported"),)
    raise AssertionError(action)


def write(store: Store, decision: Decision) -> Instance | None:
    """Make the write ``decision`` asks for; the stored row, or None when there was none."""
    if decision is None:
        return None
    row, durable, audit = decision
    return store.save_instance(row, durable=durable, audit=audit)


# -- stale writes --------------------------------------------------------------------


@PROPERTY
@given(rewrites=st.integers(min_value=1, max_value=4), data=st.data())
def test_a_stale_instance_write_conflicts_and_changes_nothing(
    backend: Backend, rewrites: int, data: st.DataObject
) -> None:
    store = backend.store
    instance_id = _fresh_id()
    seen = [store.save_instance(instance(id=instance_id))]
    for n in range(rewrites):
        seen.append(store.save_instance(replace(seen[-1], seq=seen[-1].seq + 1, last_report=n)))
    current = seen[-1]
    stale_version = data.draw(
        st.sampled_from([0, *(s.version for s in seen[:-1]), current.version + 1]), "read at"
    )
    stale = replace(current, version=stale_version)
    action = data.draw(st.sampled_from(["taint", "sweep", "heartbeat", "conformant-new"]))
    attempt: Decision
    if action == "conformant-new":  # a writer that believes the row new
        attempt = (replace(current, version=0), True, ())
    else:
        attempt = decide(action, stale)
        assert attempt is not None
    head = _audit_seq(store)

    with pytest.raises(ConflictError):
        write(store, attempt)

    after = store.get_instance(instance_id)
    assert after == current
    assert after is not None and after.version == current.version
    assert _audit_seq(store) == head
    store.flush()
    raw = backend.raw_row(instance_id)
    assert raw is None or raw == (current.state.value, current.version)


@PROPERTY
@given(rewrites=st.integers(min_value=1, max_value=3), behind=st.integers(min_value=1, max_value=3))
def test_a_stale_group_update_conflicts_and_changes_nothing(
    backend: Backend, rewrites: int, behind: int
) -> None:
    store = backend.store
    current = store.get_group(GROUP.name)
    assert current is not None
    for n in range(rewrites):
        current = store.update_group(replace(current, generation=current.generation + 1 + n))
    stale = replace(current, version=max(0, current.version - behind), breaker_open=True)
    head = _audit_seq(store)

    with pytest.raises(ConflictError):
        store.update_group(stale, audit=(_event(EventKind.BREAKER_OPEN, "", "stale"),))

    after = store.get_group(GROUP.name)
    assert after == current and after is not None and after.version == current.version
    assert _audit_seq(store) == head


@PROPERTY
@given(rewrites=st.integers(min_value=1, max_value=3), data=st.data())
def test_a_stale_replacement_update_conflicts_and_changes_nothing(
    backend: Backend, rewrites: int, data: st.DataObject
) -> None:
    store = backend.store
    key = f"rpl-{_fresh_id()}"
    record = replacement(replacement_id=key, instance_id="i-old")
    assert store.add_replacement(record)
    current = store.get_replacement(key)
    assert current is not None and current.version == 1
    versions = [current.version]
    for n in range(rewrites):
        current = store.update_replacement(replace(current, attempt=n + 1))
        versions.append(current.version)
    stale_version = data.draw(st.sampled_from([*versions[:-1], current.version + 1]))
    stale = replace(current, version=stale_version, phase=Phase.LAUNCHING, new_instance_id="i-x")
    head = _audit_seq(store)

    with pytest.raises(ConflictError):
        store.update_replacement(stale, audit=(_event(EventKind.REPLACEMENT_STEP, "i-old", "x"),))

    after = store.get_replacement(key)
    assert after == current and after is not None and after.version == current.version
    assert _audit_seq(store) == head


# -- interleavings, against a model ---------------------------------------------------

ACTIONS = ("taint", "sweep", "heartbeat", "conformant")


@PROPERTY
@given(
    writers=st.integers(min_value=2, max_value=4),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from(("read", *ACTIONS))),
        min_size=1,
        max_size=30,
    ),
)
def test_every_interleaving_is_what_compare_and_set_predicts(
    backend: Backend, writers: int, steps: list[tuple[int, str]]
) -> None:
    """Each writer reads when it has nothing read (or is told to), then decides and writes
    from what it read. A write succeeds exactly when nobody wrote since that read."""
    stores = backend.writers(writers)
    instance_id = _fresh_id()
    model = stores[0].save_instance(instance(id=instance_id))
    reads: list[Instance | None] = [None] * writers
    ever_tainted = False
    audit_expected = _audit_seq(stores[0])

    for index, action in steps:
        who = index % writers
        store = stores[who]
        if action == "read" or reads[who] is None:
            reads[who] = store.get_instance(instance_id)
            if action == "read":
                continue
        read = reads[who]
        assert read is not None
        decision = decide(action, read)
        if decision is None:
            continue
        if read.version == model.version:
            saved = write(store, decision)
            assert saved is not None and saved.version == model.version + 1
            model = saved
            reads[who] = saved
            audit_expected += len(decision[2])
        else:
            with pytest.raises(ConflictError):
                write(store, decision)
            reads[who] = None  # it must read again before it writes again
        stored = stores[(who + 1) % writers].get_instance(instance_id)
        assert stored == model and stored is not None and stored.version == model.version
        ever_tainted = ever_tainted or model.state is InstanceState.TAINTED
        assert not ever_tainted or model.state in FINAL
        assert _audit_seq(stores[0]) == audit_expected

    for store in stores:
        store.flush()
    raw = backend.raw_row(instance_id)
    assert raw is None or raw == (model.state.value, model.version)


# -- writers racing for real ------------------------------------------------------------


@dataclass
class Outcome:
    """What one racing writer saw: every row it stored, and how many writes conflicted."""

    stored: list[Instance] = field(default_factory=list)
    conflicts: int = 0
    audited: int = 0


def _race(store: Store, instance_id: str, plan: list[str], outcome: Outcome) -> None:
    for action in plan:
        while True:  # a report decides again on the new row; a sweep gives up
            read = store.get_instance(instance_id)
            assert read is not None
            decision = decide(action, read)
            if decision is None:
                break
            try:
                saved = write(store, decision)
            except ConflictError:
                outcome.conflicts += 1
                if action == "sweep":
                    break
                continue
            assert saved is not None
            outcome.stored.append(saved)
            outcome.audited += len(decision[2])
            break


@settings(PROPERTY, max_examples=6)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_racing_writers_store_exactly_their_successful_writes_and_keep_the_taint(
    backend: Backend, seed: int
) -> None:
    threads_count = 4
    stores = backend.writers(threads_count)
    rng = random.Random(seed)
    instance_id = _fresh_id()
    first = stores[0].save_instance(instance(id=instance_id))
    head = _audit_seq(stores[0])
    plans = [
        [rng.choice(("taint", "sweep", "heartbeat", "heartbeat", "conformant")) for _ in range(25)]
        for _ in range(threads_count)
    ]
    outcomes = [Outcome() for _ in range(threads_count)]
    start = threading.Barrier(threads_count)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait(timeout=30)
            _race(stores[index], instance_id, plans[index], outcomes[index])
        except BaseException as error:  # reported below, with the thread's traceback
            failures.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    if failures:
        raise failures[0]

    stored = sorted((s for o in outcomes for s in o.stored), key=lambda s: s.version)
    # Each success stored the next version: none lost, none written twice.
    assert [s.version for s in stored] == list(range(2, 2 + len(stored)))
    final = stores[0].get_instance(instance_id)
    last = stored[-1] if stored else first
    assert final == last and final is not None and final.version == last.version
    # Nothing follows a taint but a taint (or replacing / retired).
    states = [s.state for s in stored]
    if InstanceState.TAINTED in states:
        assert all(s in FINAL for s in states[states.index(InstanceState.TAINTED) :])
    assert _audit_seq(stores[0]) - head == sum(o.audited for o in outcomes)
    for store in stores:
        store.flush()
    raw = backend.raw_row(instance_id)
    assert raw is None or raw == (final.state.value, final.version)


# -- the database's own guard ------------------------------------------------------------


def _raw_update(backend: Backend, instance_id: str, state: str) -> Callable[[], None]:
    if backend.kind == "sqlite":

        def sqlite_update() -> None:
            db = sqlite3.connect(backend.tmp / "corral.db", isolation_level=None)
            try:
                db.execute("UPDATE instances SET state = ? WHERE id = ?", (state, instance_id))
            finally:
                db.close()

        return sqlite_update

    def postgres_update() -> None:
        with connect(backend.schema) as conn:
            conn.execute("UPDATE instances SET state = %s WHERE id = %s", (state, instance_id))

    return postgres_update


@pytest.mark.parametrize(
    ("stored", "target", "allowed"),
    [
        ("tainted", "conformant", False),
        ("tainted", "unknown", False),
        ("tainted", "pending", False),
        ("replacing", "conformant", False),
        ("retired", "tainted", False),
        ("retired", "conformant", False),
        ("tainted", "replacing", True),
        ("replacing", "retired", True),
        ("conformant", "unknown", True),
    ],
)
def test_the_database_refuses_a_raw_update_that_goes_back(
    sql_backend: Backend, stored: str, target: str, allowed: bool
) -> None:
    backend = sql_backend
    instance_id = _fresh_id()
    taint = _taint(1.0) if stored != "conformant" else None
    backend.store.save_instance(instance(id=instance_id, state=InstanceState(stored), taint=taint))
    update = _raw_update(backend, instance_id, target)
    if allowed:
        update()
        assert backend.raw_row(instance_id) == (target, 1)
        return
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)) as refused:
        update()
    assert "never goes back" in str(refused.value)
    assert backend.raw_row(instance_id) == (stored, 1)
