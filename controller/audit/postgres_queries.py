"""The PostgreSQL adapter's read side: the SQLite adapter's index-narrowed queries in its SQL.

Same narrowing as :mod:`controller.audit.sqlite_queries` (the latest
transition of each instance, transitions as bare columns) with PostgreSQL
spellings: ``data::jsonb ->> 'to'`` for SQLite's ``json_extract`` and
``DISTINCT ON`` where SQLite groups by. The answers are assembled by the pure
folds in ``queries``, so every adapter agrees. Callers hold one read
transaction so every statement sees the same snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg

from controller.audit import queries
from controller.audit.errors import AuditError
from controller.audit.record import EventKind, Record, trusted_event

Connection = psycopg.Connection[tuple[Any, ...]]

COLUMNS = (
    "seq, at_ms, kind, actor, reason, instance_id, related_instance_id, group_name, image,"
    " data, prev_hash, hash"
)
# An instance transition as bare columns, for the query fast path.
TRANSITION = "seq, instance_id, group_name, image, at_ms, data::jsonb ->> 'to'"
_DESIRED = "('group.created', 'group.rollout', 'group.rollback')"


def conformance_at(
    conn: Connection, at_ms: int, *, group: str | None = None
) -> queries.Conformance:
    """Every instance that existed at ``at_ms``: the fleet after the last record at or before it."""
    row = conn.execute("SELECT MAX(seq) FROM audit_records WHERE at_ms <= %s", (at_ms,)).fetchone()
    last = row[0] if row is not None else None
    state = state_after(conn, int(last or 0))
    return queries.conformance_from(state.latest.values(), at_ms=at_ms, group=group)


def instance_history(conn: Connection, instance_id: str) -> queries.InstanceHistory:
    """Records naming ``instance_id`` as subject or related instance, by the two indexes."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE instance_id = %s"
        f" UNION SELECT {COLUMNS} FROM audit_records WHERE related_instance_id = %s"
        " ORDER BY seq",
        (instance_id, instance_id),
    ).fetchall()
    return queries.instance_history((record_from_row(r) for r in rows), instance_id)


def image_history(conn: Connection) -> tuple[queries.ImageHistory, ...]:
    """Registrations, runs and desired spans; transitions are folded as bare columns."""
    state = queries.FleetReplay()
    first = conn.execute(f"SELECT {COLUMNS} FROM audit_records ORDER BY seq LIMIT 1").fetchone()
    if first is not None and first[2] == EventKind.CHECKPOINT:
        state.apply(record_from_row(first))  # a pruned log starts from the snapshot
    _apply_transitions(
        state,
        conn.execute(
            f"SELECT {TRANSITION} FROM audit_records WHERE kind = 'instance.state' ORDER BY seq"
        ),
    )
    others = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE kind IN ('image.registered',"
        " 'group.created', 'group.rollout', 'group.rollback') ORDER BY seq"
    )
    for row in others:
        state.apply(record_from_row(row))
    return queries.images_from(state)


def state_after(conn: Connection, last_seq: int) -> queries.FleetReplay:
    """The fleet after record ``last_seq``, from indexes rather than a full replay."""
    state = queries.FleetReplay()
    rows = conn.execute(
        f"SELECT {TRANSITION} FROM ("
        " SELECT DISTINCT ON (instance_id) * FROM audit_records"
        " WHERE kind = 'instance.state' AND seq <= %s ORDER BY instance_id, seq DESC"
        ") latest ORDER BY seq",
        (last_seq,),
    )
    _apply_transitions(state, rows)
    desired = conn.execute(
        f"SELECT {COLUMNS} FROM ("
        " SELECT DISTINCT ON (group_name) * FROM audit_records"
        f" WHERE kind IN {_DESIRED} AND seq <= %s ORDER BY group_name, seq DESC"
        ") latest ORDER BY seq",
        (last_seq,),
    )
    for row in desired:
        state.apply(record_from_row(row))
    images = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE kind = 'image.registered' AND seq <= %s"
        " ORDER BY seq",
        (last_seq,),
    )
    for row in images:
        state.apply(record_from_row(row))
    checkpoint = conn.execute(
        "SELECT data FROM audit_records WHERE kind = 'audit.checkpoint' AND seq <= %s"
        " ORDER BY seq DESC LIMIT 1",
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


def record_from_row(row: tuple[Any, ...]) -> Record:
    seq, at_ms, kind, actor, reason, instance, related, group, image, data, prev, digest = row
    try:
        event = trusted_event(
            kind=EventKind(kind),
            at_ms=int(at_ms),
            actor=actor,
            reason=reason,
            instance_id=instance,
            related_instance_id=related,
            group=group,
            image=image,
            data=json.loads(data),
        )
    except ValueError as error:
        raise AuditError(
            f"record {seq} is unreadable ({error}); run `corral audit verify`"
        ) from error
    return Record(int(seq), prev, digest, event)
