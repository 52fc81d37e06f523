"""The audit log in PostgreSQL: the same chain as SQLite, shared by every controller replica.

Several replicas append to one log, so the chain is extended under a row lock:
:func:`append_in` reads the head with ``SELECT … FOR UPDATE`` inside the
caller's transaction, which makes a second replica's append wait until the
first one commits or rolls back. ``seq`` is the primary key as well, so even a
caller that forgot the lock could not fork the chain, only fail.

``data`` stays TEXT (not JSONB): the hash covers the exact canonical text, and
JSONB would re-order keys and re-format numbers. Queries read fields with
``data::jsonb ->> 'to'``. A trigger refuses UPDATE, TRUNCATE and any DELETE not
behind the pruning base; like SQLite's triggers it stops mistakes, not a
database owner (see docs/audit.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq

from controller.audit import sql_log
from controller.audit.errors import AuditError
from controller.audit.record import GENESIS_HASH, Event, Record
from controller.audit.sql_queries import COLUMNS, TRANSITION_COLUMNS, Dialect

Connection = psycopg.Connection[tuple[Any, ...]]

SCHEMA = (
    sql_log.tables(integer="BIGINT")
    + f"""INSERT INTO audit_head VALUES (1, 0, '{GENESIS_HASH}', 0, 0, '{GENESIS_HASH}')
    ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION audit_records_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'UPDATE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'audit records are append-only';
    END IF;
    IF OLD.seq > (SELECT base_seq FROM audit_head WHERE id = 1) THEN
        RAISE EXCEPTION 'audit records are deleted only behind a checkpoint';
    END IF;
    RETURN OLD;
END $$;
CREATE OR REPLACE TRIGGER audit_records_guard BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_guard();
CREATE OR REPLACE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_guard();
"""
)

MIGRATION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('corral.migrate:' || current_schema(), 0))"
)
"""Taken by whatever changes the schema, so replicas starting together take turns."""
TRANSITION = f"{TRANSITION_COLUMNS}, data::jsonb ->> 'to'"
DIALECT = Dialect(
    param="%s",
    transition=TRANSITION,
    latest_transitions=(
        f"SELECT {TRANSITION} FROM ("
        " SELECT DISTINCT ON (instance_id) * FROM audit_records"
        " WHERE kind = 'instance.state' AND seq <= ? ORDER BY instance_id, seq DESC"
        ") latest ORDER BY seq"
    ),
    latest_desired=(
        f"SELECT {COLUMNS} FROM ("
        " SELECT DISTINCT ON (group_name) * FROM audit_records"
        " WHERE kind IN ('group.created', 'group.rollout', 'group.rollback') AND seq <= ?"
        " ORDER BY group_name, seq DESC"
        ") latest ORDER BY seq"
    ),
    lock=" FOR UPDATE",
)
"""PostgreSQL's spellings: ``DISTINCT ON`` for the latest row of each key, and
head reads that lock the row so every replica's appends queue up on one chain."""


def install_schema(conn: Connection) -> None:
    """Create the audit tables, indexes and trigger if missing (idempotent, replica-safe).

    Runs in its own transaction under an advisory lock per schema, so replicas
    starting together do not race on the DDL.
    """
    with conn.transaction():
        conn.execute(MIGRATION_LOCK)
        conn.execute(SCHEMA.encode())


def in_transaction(conn: Connection) -> bool:
    return conn.info.transaction_status != pq.TransactionStatus.IDLE


def append_in(conn: Connection, event: Event) -> Record:
    """Append ``event`` inside the caller's open transaction and return the record.

    Locks the head row until the caller commits or rolls back, so appends from
    every replica queue up on one chain. Raises AuditError when no transaction is open.
    """
    if not in_transaction(conn):
        raise AuditError("append_in needs an open transaction")
    return sql_log.append(conn, event, dialect=DIALECT)


class PostgresAuditLog(sql_log.SqlAuditLog[Connection]):
    """The ``AuditLog`` port on one PostgreSQL connection of its own.

    Reads run in one REPEATABLE READ transaction each, so a query or ``verify``
    sees one snapshot while other replicas keep appending.
    """

    dialect = DIALECT

    def __init__(self, conn: Connection, *, install: bool = True) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        if install:
            install_schema(conn)

    @classmethod
    def connect(cls, conninfo: str, *, install: bool = True) -> PostgresAuditLog:
        """Open a connection of its own. Raises AuditError when the server is unreachable."""
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as error:
            raise AuditError(f"cannot open the audit log in PostgreSQL: {error}") from None
        return cls(conn, install=install)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._lock, self._conn.transaction():
            yield self._conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock:
            if in_transaction(self._conn):
                yield self._conn
                return
            with self._conn.transaction():
                self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield self._conn

    def _stream(
        self, conn: Connection, query: str, params: Sequence[Any] = (), *, name: str
    ) -> Iterator[Any]:
        """The rows through a server-side cursor, so a large log is never held in memory."""
        with conn.cursor(name=name) as cursor:
            cursor.execute(query, params)
            yield from cursor
