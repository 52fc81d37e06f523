"""The SQL audit logs' read side, written once: time-travel answers from indexes, not replays.

Each function narrows the records with SQL (the latest transition of each
instance, transitions as bare columns) and hands them to the pure folds in
``queries``, so SQLite, PostgreSQL and the in-memory adapter give the same
answers. The SQL is written with ``?`` placeholders; what a database spells its
own way (its placeholders, the JSON field, how to pick the latest row of each
key, index hints) comes from the adapter's :class:`Dialect`. Callers hold a read
transaction so every statement sees the same snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.audit import queries
from controller.audit.record import EventKind
from controller.audit.row import record_from_row

COLUMNS = (
    "seq, at_ms, kind, actor, reason, instance_id, related_instance_id, group_name, image,"
    " data, prev_hash, hash"
)
TRANSITION_COLUMNS = "seq, instance_id, group_name, image, at_ms"
"""An instance transition as bare columns (the dialect adds its ``to``), for the fast path."""


class Rows(Protocol):
    """The part of a DB-API cursor the shared SQL uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a sqlite3 or psycopg connection the shared SQL uses."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Rows: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one database spells its own way; each SQL adapter gives one."""

    param: str
    """The placeholder written for each ``?`` of the shared SQL."""
    transition: str
    """``TRANSITION_COLUMNS`` and the transition's ``to`` read from ``data``."""
    latest_transitions: str
    """The ``transition`` columns of each instance's latest transition with ``seq <= ?``."""
    latest_desired: str
    """``COLUMNS`` of each group's latest desired-image record with ``seq <= ?``."""
    kind_index: str = ""
    """An index hint after ``FROM audit_records`` for scans by kind."""
    time_index: str = ""
    """An index hint after ``FROM audit_records`` for the first or last seq of a time."""
    lock: str = ""
    """Appended to a read of the head row to lock it until the transaction ends."""

    def sql(self, statement: str) -> str:
        """``statement`` (written with ``?``) in this database's placeholders."""
        return statement.replace("?", self.param)


def conformance_at(
    conn: Connection, at_ms: int, *, dialect: Dialect, group: str | None = None
) -> queries.Conformance:
    """Every instance that existed at ``at_ms``: the fleet after the last record at or before it."""
    row = conn.execute(
        dialect.sql("SELECT MAX(seq) FROM audit_records WHERE at_ms <= ?"), (at_ms,)
    ).fetchone()
    last = row[0] if row is not None else None
    state = state_after(conn, int(last or 0), dialect=dialect)
    return queries.conformance_from(state.latest.values(), at_ms=at_ms, group=group)


def instance_history(
    conn: Connection, instance_id: str, *, dialect: Dialect
) -> queries.InstanceHistory:
    """Records naming ``instance_id`` as subject or related instance, by the two indexes."""
    rows = conn.execute(
        dialect.sql(
            f"SELECT {COLUMNS} FROM audit_records WHERE instance_id = ?"
            f" UNION SELECT {COLUMNS} FROM audit_records WHERE related_instance_id = ?"
            " ORDER BY seq"
        ),
        (instance_id, instance_id),
    ).fetchall()
    return queries.instance_history((record_from_row(r) for r in rows), instance_id)


def image_history(conn: Connection, *, dialect: Dialect) -> tuple[queries.ImageHistory, ...]:
    """Registrations, runs and desired spans; transitions are folded as bare columns."""
    state = queries.FleetReplay()
    first = conn.execute(f"SELECT {COLUMNS} FROM audit_records ORDER BY seq LIMIT 1").fetchone()
    if first is not None and first[2] == EventKind.CHECKPOINT:
        state.apply(record_from_row(first))  # a pruned log starts from the snapshot
    _apply_transitions(
        state,
        conn.execute(
            f"SELECT {dialect.transition} FROM audit_records{dialect.kind_index}"
            " WHERE kind = 'instance.state' ORDER BY seq"
        ),
    )
    others = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records{dialect.kind_index}"
        " WHERE kind IN ('image.registered', 'group.created', 'group.rollout',"
        " 'group.rollback') ORDER BY seq"
    )
    for row in others:
        state.apply(record_from_row(row))
    return queries.images_from(state)


def state_after(conn: Connection, last_seq: int, *, dialect: Dialect) -> queries.FleetReplay:
    """The fleet after record ``last_seq``, from indexes rather than a full replay.

    Latest transition of each instance, latest desired image of each group, every
    image registration, and the newest checkpoint's snapshot for whatever was
    pruned before it.
    """
    state = queries.FleetReplay()
    _apply_transitions(state, conn.execute(dialect.sql(dialect.latest_transitions), (last_seq,)))
    for row in conn.execute(dialect.sql(dialect.latest_desired), (last_seq,)):
        state.apply(record_from_row(row))
    images = conn.execute(
        dialect.sql(
            f"SELECT {COLUMNS} FROM audit_records WHERE kind = 'image.registered' AND seq <= ?"
            " ORDER BY seq"
        ),
        (last_seq,),
    )
    for row in images:
        state.apply(record_from_row(row))
    checkpoint = conn.execute(
        dialect.sql(
            "SELECT data FROM audit_records WHERE kind = 'audit.checkpoint' AND seq <= ?"
            " ORDER BY seq DESC LIMIT 1"
        ),
        (last_seq,),
    ).fetchone()
    if checkpoint is not None:
        state.load_snapshot(json.loads(checkpoint[0]).get("snapshot"))
    return state


def _apply_transitions(state: queries.FleetReplay, rows: Iterable[tuple[Any, ...]]) -> None:
    for seq, instance, group, image, at_ms, to in rows:
        state.transition(
            seq=int(seq),
            instance=instance or "",
            group=group or "",
            image=image or "",
            at_ms=int(at_ms),
            to=str(to),
        )
