"""The SQLite adapter's read side: time-travel answers from indexes, not full replays.

Each function narrows the records with SQL (the latest transition of each
instance, transitions as bare columns) and hands them to the pure folds in
``queries``, so the answers are the same as the in-memory adapter's. Callers
hold a read transaction so every statement sees the same snapshot.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from controller.audit import queries
from controller.audit.errors import AuditError
from controller.audit.record import EventKind, Record, trusted_event

# An instance transition as bare columns, for the query fast path.
TRANSITION = "seq, instance_id, group_name, image, at_ms, json_extract(data, '$.to')"

COLUMNS = (
    "seq, at_ms, kind, actor, reason, instance_id, related_instance_id, group_name, image,"
    " data, prev_hash, hash"
)


def conformance_at(
    conn: sqlite3.Connection, at_ms: int, *, group: str | None = None
) -> queries.Conformance:
    """Every instance that existed at ``at_ms``: the fleet after the last record at or before it."""
    (last,) = conn.execute(
        "SELECT MAX(seq) FROM audit_records WHERE at_ms <= ?", (at_ms,)
    ).fetchone()
    state = state_after(conn, last or 0)
    return queries.conformance_from(state.latest.values(), at_ms=at_ms, group=group)


def instance_history(conn: sqlite3.Connection, instance_id: str) -> queries.InstanceHistory:
    """Records naming ``instance_id`` as subject or related instance, by the two indexes."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE instance_id = ?"
        f" UNION SELECT {COLUMNS} FROM audit_records WHERE related_instance_id = ?"
        " ORDER BY seq",
        (instance_id, instance_id),
    ).fetchall()
    return queries.instance_history((record_from_row(r) for r in rows), instance_id)


def image_history(conn: sqlite3.Connection) -> tuple[queries.ImageHistory, ...]:
    """Registrations, runs and desired spans; transitions are folded as bare columns."""
    state = queries.FleetReplay()
    first = conn.execute(f"SELECT {COLUMNS} FROM audit_records ORDER BY seq LIMIT 1").fetchone()
    if first is not None and first[2] == EventKind.CHECKPOINT:
        state.apply(record_from_row(first))  # a pruned log starts from the snapshot
    _apply_transitions(
        state,
        conn.execute(
            f"SELECT {TRANSITION} FROM audit_records INDEXED BY audit_records_kind"
            " WHERE kind = 'instance.state' ORDER BY seq"
        ),
    )
    others = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records INDEXED BY audit_records_kind"
        " WHERE kind IN ('image.registered', 'group.created', 'group.rollout',"
        " 'group.rollback') ORDER BY seq"
    )
    for row in others:
        state.apply(record_from_row(row))
    return queries.images_from(state)


def state_after(conn: sqlite3.Connection, last_seq: int) -> queries.FleetReplay:
    """The fleet after record ``last_seq``, from indexes rather than a full replay.

    Latest transition of each instance, latest desired image of each group, every
    image registration, and the newest checkpoint's snapshot for whatever was
    pruned before it.
    """
    state = queries.FleetReplay()
    rows = conn.execute(
        f"SELECT {TRANSITION} FROM audit_records WHERE seq IN ("
        " SELECT MAX(seq) FROM audit_records INDEXED BY audit_records_transitions"
        " WHERE kind = 'instance.state' AND seq <= ? GROUP BY instance_id)",
        (last_seq,),
    )
    _apply_transitions(state, rows)
    desired = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE seq IN ("
        " SELECT MAX(seq) FROM audit_records"
        " WHERE kind IN ('group.created', 'group.rollout', 'group.rollback') AND seq <= ?"
        " GROUP BY group_name)",
        (last_seq,),
    )
    for row in desired:
        state.apply(record_from_row(row))
    images = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE kind = 'image.registered' AND seq <= ?"
        " ORDER BY seq",
        (last_seq,),
    )
    for row in images:
        state.apply(record_from_row(row))
    checkpoint = conn.execute(
        "SELECT data FROM audit_records WHERE kind = 'audit.checkpoint' AND seq <= ?"
        " ORDER BY seq DESC LIMIT 1",
        (last_seq,),
    ).fetchone()
    if checkpoint is not None:
        state.load_snapshot(json.loads(checkpoint[0]).get("snapshot"))
    return state


def _apply_transitions(state: queries.FleetReplay, rows: Iterable[tuple[Any, ...]]) -> None:
    for seq, instance, group, image, at_ms, to in rows:
        state.transition(
            seq=seq,
            instance=instance or "",
            group=group or "",
            image=image or "",
            at_ms=at_ms,
            to=str(to),
        )


def record_from_row(row: tuple[Any, ...]) -> Record:
    seq, at_ms, kind, actor, reason, instance, related, group, image, data, prev, digest = row
    try:
        event = trusted_event(
            kind=EventKind(kind),
            at_ms=at_ms,
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
    return Record(seq, prev, digest, event)
