"""What the PostgreSQL store and leadership promise beyond the Store contract: several replicas.

Two stores on one schema stand for two controller replicas: each must see the
other's writes at once, never undo the other's state change with a heartbeat,
keep the image registry immutable and the audit chain unforked under
concurrency, and survive a dropped connection. Two leaderships on one schema
elect exactly one leader, and a survivor takes over when the leader's session dies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import psycopg
import pytest

from controller.audit import events as ev
from controller.audit.record import Event
from controller.demo.fleet import wait_for
from controller.domain.model import Instance, InstanceState
from controller.errors import AlreadyExistsError, ConflictError, ControllerError, NotFoundError
from controller.store.postgres import PostgresStore
from controller.store.postgres_leadership import PostgresLeadership
from tests.fixtures.postgres import connect, fresh_schema, postgres_dsn
from tests.fixtures.records import GROUP, IMAGE, instance

pytestmark = pytest.mark.postgres

INSTANCE = instance()


@pytest.fixture
def schema() -> Iterator[str]:
    with fresh_schema() as name:
        yield name


@pytest.fixture
def pair(schema: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    first = PostgresStore(postgres_dsn(), schema=schema)
    second = PostgresStore(postgres_dsn(), schema=schema)
    yield first, second
    first.close()
    second.close()


def transition(instance: Instance, to: InstanceState) -> Event:
    return ev.instance_transition(
        instance.id,
        at_ms=int(instance.last_report * 1000),
        actor="controller",
        group=instance.group,
        image=instance.image_ref,
        from_state=None,
        to_state=to.value,
    )


def concurrently(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released together; each result or the exception it raised."""
    results: list[object] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(n: int) -> None:
        barrier.wait()
        try:
            results[n] = calls[n]()
        except Exception as error:  # the test inspects it
            results[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class TestReplicasShareState:
    def test_each_sees_the_others_writes_at_once(
        self, pair: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = pair
        a.add_image(IMAGE, b"manifest")
        b.add_group(GROUP)
        assert a.get_group("web") == GROUP
        a.save_instance(INSTANCE)
        seen = b.get_instance("i-1")
        assert seen == INSTANCE
        assert seen is not None
        b.save_instance(replace(seen, seq=4), durable=False)
        assert a.get_instance("i-1") == replace(INSTANCE, seq=4)
        stored = b.get_group("web")
        assert stored is not None
        changed = replace(stored, breaker_open=True)
        b.update_group(changed)
        assert a.get_group("web") == changed
        assert a.list_images() == b.list_images() == [IMAGE]

    def test_a_heartbeat_never_undoes_a_state_change_from_the_other(
        self, pair: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = pair
        a.add_group(GROUP)
        read_by_a = a.save_instance(INSTANCE)
        read_by_b = b.get_instance("i-1")
        assert read_by_b is not None
        tainted = replace(read_by_b, state=InstanceState.TAINTED, seq=4)
        b.save_instance(tainted, audit=[transition(tainted, InstanceState.TAINTED)])
        with pytest.raises(ConflictError):  # decided on a stale read: it changes nothing
            a.save_instance(replace(read_by_a, seq=5), durable=False)
        assert b.get_instance("i-1") == tainted
        a.flush()

    def test_concurrent_registrations_keep_the_registry_immutable(
        self, pair: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = pair
        other = replace(IMAGE, manifest_digest="sha256:" + "c" * 64)
        results = concurrently(
            lambda: a.add_image(IMAGE, b"manifest"), lambda: b.add_image(other, b"other")
        )
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExistsError", "bool"]
        assert True in results
        assert len(a.list_images()) == 1
        same = concurrently(
            lambda: a.add_image(replace(IMAGE, ref="v2@x", digest="d2"), b"m"),
            lambda: b.add_image(replace(IMAGE, ref="v2@x", digest="d2"), b"m"),
        )
        assert sorted(map(str, same)) == ["False", "True"]

    def test_concurrent_durable_writes_never_fork_the_audit_chain(
        self, pair: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = pair
        a.add_group(GROUP)

        def writes(store: PostgresStore, prefix: str) -> None:
            for n in range(25):
                instance = replace(INSTANCE, id=f"{prefix}-{n}", last_report=float(n))
                store.save_instance(instance, audit=[transition(instance, instance.state)])

        concurrently(lambda: writes(a, "a"), lambda: writes(b, "b"))
        log = a.audit_log()
        assert [r.seq for r in log.records()] == list(range(1, 51))
        assert log.verify().ok
        assert len(b.list_instances("web")) == 50

    def test_a_refused_write_records_nothing(
        self, pair: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, _ = pair
        event = transition(INSTANCE, InstanceState.CONFORMANT)
        with pytest.raises(NotFoundError):
            a.save_instance(INSTANCE, audit=[event])
        with pytest.raises(NotFoundError):
            a.update_group(GROUP, audit=[event])
        a.add_image(IMAGE, b"manifest")
        with pytest.raises(AlreadyExistsError):
            a.add_image(replace(IMAGE, root=b"\x02" * 32), b"x", audit=[event])
        assert a.audit_log().head().seq == 0
        assert a.get_instance("i-1") is None

    def test_a_dropped_connection_is_replaced(
        self, pair: tuple[PostgresStore, PostgresStore], schema: str
    ) -> None:
        a, _ = pair
        a.add_group(GROUP)
        pid = a._db.info.backend_pid  # the test stands in for the network
        with connect(schema) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ControllerError, match="PostgreSQL is unavailable"):
            a.get_group("web")  # the call that finds it gone fails; the next one reconnects
        assert a.get_group("web") == GROUP

    def test_migrations_run_once(self, schema: str) -> None:
        PostgresStore(postgres_dsn(), schema=schema).close()
        PostgresStore(postgres_dsn(), schema=schema).close()
        with connect(schema) as conn:
            versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert versions == [(1,), (2,), (3,)]


class TestLeadership:
    def test_exactly_one_leads_and_a_survivor_takes_over(self, schema: str) -> None:
        first = PostgresLeadership(postgres_dsn(), schema=schema)
        second = PostgresLeadership(postgres_dsn(), schema=schema)
        try:
            for _ in range(3):
                assert [first.is_leader(), second.is_leader()] == [True, False]
            kill_session_of(first)
            assert first.is_leader() is False  # at once: its probe fails
            assert second.is_leader() is True
            assert first.is_leader() is False  # reconnected, but the lock is taken
            second.close()
            # The server drops a closed session's advisory lock when its backend has
            # gone, a moment after the client hung up: the survivor leads by then.
            assert wait_for(first.is_leader, timeout=5, step=0.05)
        finally:
            first.close()
            second.close()

    def test_each_schema_elects_its_own_leader(self, schema: str) -> None:
        with fresh_schema() as other:
            here = PostgresLeadership(postgres_dsn(), schema=schema)
            there = PostgresLeadership(postgres_dsn(), schema=other)
            try:
                assert here.is_leader() and there.is_leader()
            finally:
                here.close()
                there.close()

    def test_the_leader_hears_which_groups_other_replicas_changed(self, schema: str) -> None:
        with fresh_schema() as other:
            leader = PostgresLeadership(postgres_dsn(), schema=schema)
            replica = PostgresStore(postgres_dsn(), schema=schema)
            elsewhere = PostgresStore(postgres_dsn(), schema=other)
            try:
                assert leader.is_leader()
                assert leader.changed_groups() == {""}  # new leader: plan every group
                assert leader.changed_groups() == set()
                for store in (replica, elsewhere):
                    store.add_group(GROUP)
                    stored = store.save_instance(INSTANCE)
                    store.save_instance(replace(stored, seq=9), durable=False)  # a heartbeat
                assert wait_for(lambda: "web" in leader.changed_groups(), timeout=10)
                assert leader.changed_groups() == set()  # the other schema's change is not ours
            finally:
                leader.close()
                replica.close()
                elsewhere.close()

    def test_unreachable_database_means_not_leader(self) -> None:
        nowhere = PostgresLeadership("host=127.0.0.1 port=1 user=postgres connect_timeout=1")
        assert nowhere.is_leader() is False
        nowhere.close()


def kill_session_of(leadership: PostgresLeadership) -> None:
    """Terminate the leader's session on the server, as a crash or a dropped link would."""
    conn = leadership._conn  # the test stands in for the network
    assert conn is not None
    pid = conn.info.backend_pid
    with psycopg.connect(postgres_dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
