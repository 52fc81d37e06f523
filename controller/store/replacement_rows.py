"""Replacement rows and the group columns the replacement engine added (schema version 2).

Shared by the SQL stores so SQLite and PostgreSQL keep one schema. The SQL is
portable: plain types, ``ON CONFLICT … DO NOTHING`` for the insert-if-absent
that makes a replayed :class:`~controller.domain.replacement_actions.StartReplacement`
harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from controller.domain.replacement_actions import Kind, Phase, Strategy
from controller.domain.replacement_record import ReplacementRecord
from controller.store.codec import named

MIGRATION_2: tuple[str, ...] = (
    "ALTER TABLE groups ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE groups ADD COLUMN breaker_opened_at DOUBLE PRECISION",
    "ALTER TABLE groups ADD COLUMN breaker_resumed_at DOUBLE PRECISION",
    "ALTER TABLE groups ADD COLUMN breaker_reason TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE groups ADD COLUMN past_images TEXT NOT NULL DEFAULT '[]'",
    # Version 1 stored 1 for "no explicit budget"; 0 now means the default share.
    "UPDATE groups SET max_concurrent_replacements = 0 WHERE max_concurrent_replacements = 1",
    """CREATE TABLE replacements (
        id TEXT PRIMARY KEY,
        group_name TEXT NOT NULL REFERENCES groups(name),
        instance_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        strategy TEXT NOT NULL,
        phase TEXT NOT NULL,
        image_ref TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        attempt INTEGER NOT NULL,
        launch_issued_at DOUBLE PRECISION,
        new_instance_id TEXT,
        old_terminated INTEGER NOT NULL,
        launch_error TEXT,
        retry_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        reason TEXT NOT NULL)""",
    "CREATE INDEX replacements_group ON replacements(group_name)",
)

REPLACEMENT_COLUMNS = (
    "id",
    "group_name",
    "instance_id",
    "kind",
    "strategy",
    "phase",
    "image_ref",
    "started_at",
    "recorded_at",
    "attempt",
    "launch_issued_at",
    "new_instance_id",
    "old_terminated",
    "launch_error",
    "retry_at",
    "finished_at",
    "reason",
    "version",
)

INSERT_REPLACEMENT = (
    f"INSERT INTO replacements ({', '.join(REPLACEMENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in REPLACEMENT_COLUMNS)}) ON CONFLICT(id) DO NOTHING"
)
UPDATE_REPLACEMENT = (
    "UPDATE replacements SET "
    + ", ".join(f"{c} = ?" for c in REPLACEMENT_COLUMNS[1:])
    + " WHERE id = ? AND version = ?"
)
"""A compare-and-set: every column (the new version last), then the id and the version read."""
SELECT_REPLACEMENTS = (
    f"SELECT {', '.join(REPLACEMENT_COLUMNS)} FROM replacements ORDER BY recorded_at, id"
)


def replacement_to_row(record: ReplacementRecord) -> tuple[Any, ...]:
    return (
        record.replacement_id,
        record.group,
        record.instance_id,
        record.kind.value,
        record.strategy.value,
        record.phase.value,
        record.image_ref,
        record.started_at,
        record.recorded_at,
        record.attempt,
        record.launch_issued_at,
        record.new_instance_id,
        int(record.old_terminated),
        record.launch_error,
        record.retry_at,
        record.finished_at,
        record.reason,
        record.version,
    )


def update_params(record: ReplacementRecord) -> tuple[Any, ...]:
    """Parameters of :data:`UPDATE_REPLACEMENT` for ``record`` as read (its ``version``)."""
    row = replacement_to_row(replace(record, version=record.version + 1))
    return (*row[1:], row[0], record.version)


def replacement_from_row(row: Sequence[Any]) -> ReplacementRecord:
    v = named(REPLACEMENT_COLUMNS, row)
    return ReplacementRecord(
        replacement_id=str(v["id"]),
        group=str(v["group_name"]),
        instance_id=str(v["instance_id"]),
        kind=Kind(v["kind"]),
        strategy=Strategy(v["strategy"]),
        phase=Phase(v["phase"]),
        image_ref=str(v["image_ref"]),
        started_at=float(v["started_at"]),
        recorded_at=float(v["recorded_at"]),
        attempt=int(v["attempt"]),
        launch_issued_at=v["launch_issued_at"],
        new_instance_id=v["new_instance_id"],
        old_terminated=bool(v["old_terminated"]),
        launch_error=v["launch_error"],
        retry_at=v["retry_at"],
        finished_at=v["finished_at"],
        reason=str(v["reason"]),
        version=int(v["version"]),
    )
