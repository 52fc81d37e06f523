"""The SQL stores' schema and the statements they share, written once in ``?`` placeholders.

SQLite and PostgreSQL keep one schema: the same migration steps (version numbers
mean the same tables everywhere), differing only in the type of raw bytes and of
the taint column, which each store names. Each step runs once, in order, in one
transaction; never edit a released step. The PostgreSQL store turns ``?`` into
psycopg's placeholders.
"""

from __future__ import annotations

from controller.store.codec import GROUP_COLUMNS, INSTANCE_COLUMNS
from controller.store.replacement_rows import MIGRATION_2

Migrations = tuple[tuple[int, tuple[str, ...]], ...]

CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"

INSERT_INSTANCE = (
    f"INSERT INTO instances ({', '.join(INSTANCE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSTANCE_COLUMNS)}) ON CONFLICT(id) DO NOTHING"
)
"""Create an instance row unless one exists (then nothing changes: a lost race)."""
UPDATE_INSTANCE = (
    "UPDATE instances SET "
    + ", ".join(f"{c} = ?" for c in INSTANCE_COLUMNS[1:])
    + " WHERE id = ? AND version = ?"
)
"""A compare-and-set: every column (the new version last), then the id and the version read."""
UPSERT_INSTANCE = (
    f"INSERT INTO instances ({', '.join(INSTANCE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSTANCE_COLUMNS)}) "
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in INSTANCE_COLUMNS[1:])
)
"""Only for the SQLite flusher, whose in-memory rows are the store's authority."""
_GROUP_NAMES = [c.strip() for c in GROUP_COLUMNS.split(",")]
INSERT_GROUP = (
    f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES ({', '.join('?' for _ in _GROUP_NAMES)}) "
    "ON CONFLICT(name) DO NOTHING"
)
UPDATE_GROUP = (
    "UPDATE groups SET "
    + ", ".join(f"{c} = ?" for c in _GROUP_NAMES[1:])
    + " WHERE name = ? AND version = ?"
)
"""A compare-and-set: every group column but the name (the new version last), then the
name and the version read (:func:`cas_params`)."""


def cas_params(row: tuple[object, ...], expected: int) -> tuple[object, ...]:
    """Parameters of an ``UPDATE … WHERE key = ? AND version = ?`` from a row whose first
    column is the key and whose last is the new version."""
    return (*row[1:], row[0], expected)


MONOTONIC_MESSAGE = "corral: a tainted, replacing or retired instance never goes back"
_GOES_BACK = (
    "(OLD.state = 'retired' AND NEW.state <> 'retired') OR "
    "(OLD.state IN ('tainted', 'replacing') "
    "AND NEW.state NOT IN ('tainted', 'replacing', 'retired'))"
)
SQLITE_GUARDS = (
    "CREATE TRIGGER instances_monotonic BEFORE UPDATE OF state ON instances "
    f"WHEN {_GOES_BACK} BEGIN SELECT RAISE(ABORT, '{MONOTONIC_MESSAGE}'); END",
)
"""The last line of defence in the database itself: whatever a writer believes, a
tainted or retired row cannot be turned back (the domain's transitions never ask to)."""
POSTGRES_GUARDS = (
    "CREATE FUNCTION corral_instances_monotonic() RETURNS trigger LANGUAGE plpgsql AS $$ "
    f"BEGIN IF {_GOES_BACK} THEN RAISE EXCEPTION '{MONOTONIC_MESSAGE}' "
    "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER instances_monotonic BEFORE UPDATE OF state ON instances "
    "FOR EACH ROW EXECUTE FUNCTION corral_instances_monotonic()",
)


def migrations(*, binary: str, taint: str, guards: tuple[str, ...]) -> Migrations:
    """Every step, with ``binary`` the type of raw bytes and ``taint`` the taint column's,
    and ``guards`` the dialect's triggers that keep taints and retirements final.

    PostgreSQL stores the taint and its evidence as JSONB, so an operator can ask
    the table which instances had a given path changed; SQLite stores JSON text.
    """
    return (
        (
            1,
            (
                f"""CREATE TABLE manifests (
                digest TEXT PRIMARY KEY,
                body {binary} NOT NULL)""",
                f"""CREATE TABLE images (
                ref TEXT PRIMARY KEY,
                digest TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                version TEXT NOT NULL,
                manifest_digest TEXT NOT NULL REFERENCES manifests(digest),
                root {binary} NOT NULL,
                entry_count BIGINT NOT NULL,
                byte_count BIGINT NOT NULL,
                registered_at DOUBLE PRECISION NOT NULL,
                registered_by TEXT NOT NULL)""",
                """CREATE TABLE groups (
                name TEXT PRIMARY KEY,
                desired_image_ref TEXT NOT NULL,
                desired_image_digest TEXT NOT NULL,
                mode TEXT NOT NULL,
                provider TEXT NOT NULL,
                max_concurrent_replacements INTEGER NOT NULL,
                desired_size INTEGER NOT NULL,
                breaker_open INTEGER NOT NULL,
                image_history TEXT NOT NULL)""",
                f"""CREATE TABLE instances (
                id TEXT PRIMARY KEY,
                group_name TEXT NOT NULL REFERENCES groups(name),
                state TEXT NOT NULL,
                image_ref TEXT NOT NULL,
                image_digest TEXT NOT NULL,
                root {binary} NOT NULL,
                first_seen DOUBLE PRECISION NOT NULL,
                last_report DOUBLE PRECISION NOT NULL,
                seq BIGINT NOT NULL,
                boot_id TEXT NOT NULL,
                scanned_at_ms BIGINT NOT NULL,
                suspicious INTEGER NOT NULL,
                taint {taint},
                rss_bytes BIGINT NOT NULL,
                cpu_millis BIGINT NOT NULL,
                replaces TEXT NOT NULL)""",
                "CREATE INDEX instances_group ON instances(group_name)",
            ),
        ),
        (2, MIGRATION_2),
        (
            3,
            (
                # Row versions for compare-and-set writes; a row stored before is version 1.
                "ALTER TABLE instances ADD COLUMN version BIGINT NOT NULL DEFAULT 1",
                "ALTER TABLE groups ADD COLUMN version BIGINT NOT NULL DEFAULT 1",
                "ALTER TABLE replacements ADD COLUMN version BIGINT NOT NULL DEFAULT 1",
                *guards,
            ),
        ),
    )
