"""One contract for every AuditLog adapter: the chain, checkpoints, pruning and the queries.

Time-travel answers are checked against a naive replay written here, independently
of controller.audit.queries, over random fleet histories (hypothesis).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.audit import events as ev
from controller.audit.chain import Position
from controller.audit.errors import CheckpointError
from controller.audit.memory import MemoryAuditLog
from controller.audit.ports import AuditLog
from controller.audit.record import Event
from controller.audit.sqlite import SqliteAuditLog
from tests.fixtures.postgres import fresh_schema, schema_dsn

ADAPTERS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
IMAGES = [f"web@sha256:{c * 64}" for c in "abc"]
STATES = ["pending", "conformant", "tainted", "replacing", "unknown", "retired"]


@contextmanager
def postgres_log() -> Iterator[AuditLog]:
    """A PostgreSQL audit log in a fresh schema, dropped afterwards."""
    from controller.audit.postgres import PostgresAuditLog  # noqa: PLC0415

    with fresh_schema() as schema:
        log = PostgresAuditLog.connect(schema_dsn(schema))
        try:
            yield log
        finally:
            log.close()


def make_log(kind: str, stack: ExitStack) -> AuditLog:
    if kind == "memory":
        return MemoryAuditLog()
    if kind == "postgres":
        return stack.enter_context(postgres_log())
    return SqliteAuditLog(
        sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    )


@pytest.fixture(params=ADAPTERS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditLog]:
    if request.param == "memory":
        yield MemoryAuditLog()
    elif request.param == "postgres":
        with postgres_log() as log:
            yield log
    else:
        yield SqliteAuditLog.open(tmp_path / "audit.db")


def transition(
    instance: str, at_ms: int, to: str, *, group: str = "web", image: str = IMAGES[0]
) -> Event:
    return ev.instance_transition(
        instance,
        at_ms=at_ms,
        actor="controller",
        group=group,
        image=image,
        from_state=None,
        to_state=to,
    )


def test_records_are_gapless_and_linked(log: AuditLog) -> None:
    records = [log.append(transition(f"i-{n}", n, "pending")) for n in range(5)]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert log.head().seq == 5 and log.head().hash == records[-1].hash
    assert list(log.records()) == records
    assert log.verify().ok


@pytest.mark.parametrize("kind", ADAPTERS)
def test_same_events_give_the_same_hashes_in_every_adapter(kind: str) -> None:
    with ExitStack() as stack:
        assert _two_events_head(make_log(kind, stack)) == _two_events_head(MemoryAuditLog())


def _two_events_head(log: AuditLog) -> Position:
    log.append(transition("i-1", 10, "pending"))
    log.append(
        ev.rollout(
            "web", at_ms=11, actor="operator:alice", from_image=IMAGES[0], to_image=IMAGES[1]
        )
    )
    return log.head()


def test_times_never_go_back(log: AuditLog) -> None:
    log.append(transition("i-1", 100, "pending"))
    late = log.append(transition("i-2", 50, "pending"))
    assert late.event.at_ms == 100
    assert log.verify().ok


def test_records_filter_by_time(log: AuditLog) -> None:
    for n in range(10):
        log.append(transition(f"i-{n}", n * 10, "pending"))
    assert [r.event.at_ms for r in log.records(since_ms=20, until_ms=50)] == [20, 30, 40, 50]


def test_concurrent_appends_keep_one_chain(log: AuditLog) -> None:
    def worker(w: int) -> None:
        for n in range(40):
            log.append(transition(f"i-{w}-{n}", n, "pending"))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = list(log.records())
    assert [r.seq for r in records] == list(range(1, 161))
    assert log.verify().ok


def test_checkpoint_then_prune_keeps_verification_and_answers(log: AuditLog) -> None:
    log.append(
        ev.image_registered(
            IMAGES[0], at_ms=1, actor="operator:alice", digest="d", manifest_digest="m"
        )
    )
    log.append(
        ev.group_created("web", at_ms=2, actor="operator:alice", image=IMAGES[0], mode="enforce")
    )
    log.append(transition("i-1", 3, "pending"))
    log.append(transition("i-1", 4, "conformant"))
    log.append(transition("i-2", 5, "pending"))
    log.append(transition("i-2", 6, "retired"))
    checkpoint = log.checkpoint(at_ms=7, actor="operator:bob", key=b"k" * 32)
    log.append(transition("i-3", 8, "conformant"))
    before = (
        log.conformance_at(9),
        [(i.image, i.registered_by, i.desired) for i in log.image_history()],
    )
    assert log.prune_before(checkpoint) == 6
    assert [r.seq for r in log.records()] == [7, 8]
    result = log.verify(key=b"k" * 32)
    assert result.ok, result.describe()
    assert result.first_seq == 7
    assert log.conformance_at(9) == before[0]
    assert [(i.image, i.registered_by, i.desired) for i in log.image_history()] == before[1]
    log.append(transition("i-1", 10, "tainted"))
    assert log.verify().ok
    assert {i.instance_id: i.state for i in log.conformance_at(10).instances} == {
        "i-1": "tainted",
        "i-3": "conformant",
    }


def test_prune_refuses_what_is_not_a_checkpoint(log: AuditLog) -> None:
    log.append(transition("i-1", 1, "pending"))
    checkpoint = log.checkpoint(at_ms=2, actor="controller")
    with pytest.raises(CheckpointError):
        log.prune_before(replace(checkpoint, seq=1))
    with pytest.raises(CheckpointError):
        log.prune_before(replace(checkpoint, hash="f" * 64))


def test_signed_checkpoint_needs_the_right_key(log: AuditLog) -> None:
    log.append(transition("i-1", 1, "pending"))
    checkpoint = log.checkpoint(at_ms=2, actor="controller", key=b"s" * 32)
    assert checkpoint.signature and checkpoint.key_id
    assert "sha256=" + checkpoint.hash in checkpoint.anchor
    assert log.verify(key=b"s" * 32).ok
    wrong = log.verify(key=b"t" * 32)
    assert not wrong.ok and wrong.first_bad_seq == checkpoint.seq
    unsigned = log.checkpoint(at_ms=3, actor="controller")
    result = log.verify(key=b"s" * 32)
    assert not result.ok and result.first_bad_seq == unsigned.seq


def test_instance_history_runs_from_launch_to_retire(log: AuditLog) -> None:
    log.append(transition("i-1", 1, "pending"))
    log.append(transition("i-2", 1, "pending"))
    log.append(transition("i-1", 2, "conformant"))
    log.append(
        ev.taint(
            "i-1",
            at_ms=3,
            actor="agent:i-1",
            group="web",
            image=IMAGES[0],
            source="agent",
            drift_kind="file",
            reason="x",
        )
    )
    log.append(
        ev.replacement_step(
            at_ms=4,
            actor="controller",
            group="web",
            replacement_id="r-1",
            idempotency_key="k",
            phase="launched",
            old_instance="i-1",
            new_instance="i-9",
            image=IMAGES[0],
        )
    )
    log.append(transition("i-1", 5, "retired"))
    history = log.instance_history("i-1")
    assert (history.launched_ms, history.retired_ms) == (1, 5)
    assert [r.seq for r in history.records] == [1, 3, 4, 5, 6]
    assert [r.seq for r in log.instance_history("i-9").records] == [5]
    assert log.instance_history("nobody").records == ()


def test_image_history_tracks_registration_runs_and_desired(log: AuditLog) -> None:
    a, b = IMAGES[0], IMAGES[1]
    log.append(
        ev.image_registered(a, at_ms=1, actor="operator:alice", digest="da", manifest_digest="ma")
    )
    log.append(ev.group_created("web", at_ms=2, actor="operator:alice", image=a, mode="enforce"))
    log.append(transition("i-1", 3, "conformant", image=a))
    log.append(
        ev.image_registered(b, at_ms=4, actor="operator:carol", digest="db", manifest_digest="mb")
    )
    log.append(ev.rollout("web", at_ms=5, actor="operator:carol", from_image=a, to_image=b))
    log.append(transition("i-2", 6, "conformant", image=b))
    log.append(transition("i-1", 7, "retired", image=a))
    log.append(ev.rollback("web", at_ms=8, actor="operator:dave", from_image=b, to_image=a))
    by_image = {i.image: i for i in log.image_history()}
    assert (by_image[a].registered_ms, by_image[a].registered_by) == (1, "operator:alice")
    assert [(r.instance_id, r.from_ms, r.until_ms) for r in by_image[a].runs] == [("i-1", 3, 7)]
    assert [(r.instance_id, r.from_ms, r.until_ms) for r in by_image[b].runs] == [("i-2", 6, None)]
    assert [(d.group, d.from_ms, d.until_ms, d.how) for d in by_image[a].desired] == [
        ("web", 2, 5, "group.created"),
        ("web", 8, None, "group.rollback"),
    ]
    assert [(d.from_ms, d.until_ms, d.actor) for d in by_image[b].desired] == [
        (5, 8, "operator:carol")
    ]


# --- property: conformance at any moment equals a naive replay of what happened --------

Step = tuple[int, int, str, int, int]  # (time step, instance, state, group, image)

steps = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 6),
        st.sampled_from(STATES),
        st.integers(0, 1),
        st.integers(0, 2),
    ),
    max_size=40,
)


def naive_conformance(
    history: list[tuple[int, str, str, str, str]], at_ms: int, group: str | None
) -> dict[str, tuple[str, str, str]]:
    """Instance -> (group, image, state) of those alive at ``at_ms``, from the script."""
    alive: dict[str, tuple[str, str, str]] = {}
    for when, instance, state, grp, image in history:
        if when > at_ms:
            continue
        if state == "retired":
            alive.pop(instance, None)
        else:
            alive[instance] = (grp, image, state)
    return {k: v for k, v in alive.items() if group is None or v[0] == group}


def play(
    log: AuditLog, script: list[Step], checkpoint_every: int
) -> tuple[list[tuple[int, str, str, str, str]], list[int]]:
    history: list[tuple[int, str, str, str, str]] = []
    now = 0
    checkpoints = []
    for n, (dt, inst, state, grp, img) in enumerate(script):
        now += dt
        row = (now, f"i-{inst}", state, f"g{grp}", IMAGES[img])
        log.append(
            ev.instance_transition(
                row[1],
                at_ms=now,
                actor="controller",
                group=row[3],
                image=row[4],
                from_state=None,
                to_state=state,
            )
        )
        history.append(row)
        if checkpoint_every and n % checkpoint_every == checkpoint_every - 1:
            checkpoints.append(log.checkpoint(at_ms=now, actor="controller").seq)
    return history, checkpoints


@pytest.mark.parametrize("kind", ADAPTERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=steps,
    checkpoint_every=st.sampled_from([0, 3, 7]),
    prune=st.booleans(),
    group=st.sampled_from([None, "g0", "g1"]),
)
def test_conformance_matches_naive_replay(
    kind: str, script: list[Step], checkpoint_every: int, prune: bool, group: str | None
) -> None:
    with ExitStack() as stack:
        log = make_log(kind, stack)
        history, _ = play(log, script, checkpoint_every)
        end = history[-1][0] if history else 0
        earliest = -1
        checkpoints = log.checkpoints()
        if prune and checkpoints:
            cut = checkpoints[len(checkpoints) // 2]
            log.prune_before(cut)
            earliest = cut.at_ms
        assert log.verify().ok
        for at_ms in range(max(earliest, -1), end + 2):
            got = log.conformance_at(at_ms, group=group)
            expected = naive_conformance(history, at_ms, group)
            assert {
                i.instance_id: (i.group, i.image, i.state) for i in got.instances
            } == expected, at_ms
            conformant = sum(1 for v in expected.values() if v[2] == "conformant")
            assert got.ratio == (conformant / len(expected) if expected else None)
