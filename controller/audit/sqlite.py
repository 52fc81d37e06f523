"""The audit log in SQLite: an append-only table inside the controller's own store file.

Two ways in. ``append_in(conn, event)`` appends inside a transaction the
caller already holds (the controller's store records a state change and its
audit record atomically). ``SqliteAuditLog`` implements the ``AuditLog`` port
on a connection it owns or is given, for the CLI, tests and benchmarks.

The chain cannot fork: the next seq and prev hash are read inside the write
transaction (``BEGIN IMMEDIATE`` takes SQLite's write lock first), ``seq`` is
the primary key, and ``audit_head`` holds the latest (seq, hash) so a deleted
tail is detected. Triggers refuse UPDATE and any DELETE not behind the pruning
base; they stop mistakes, not an attacker who can rewrite the file (see
docs/audit.md).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from controller.audit import sql_log
from controller.audit.chain import Position
from controller.audit.errors import AuditError
from controller.audit.record import GENESIS_HASH, Event, Record, make_record
from controller.audit.snapshot import clamp
from controller.audit.sql_queries import COLUMNS, TRANSITION_COLUMNS, Dialect

TRANSITION = f"{TRANSITION_COLUMNS}, json_extract(data, '$.to')"
DIALECT = Dialect(
    param="?",
    transition=TRANSITION,
    latest_transitions=(
        f"SELECT {TRANSITION} FROM audit_records WHERE seq IN ("
        " SELECT MAX(seq) FROM audit_records INDEXED BY audit_records_transitions"
        " WHERE kind = 'instance.state' AND seq <= ? GROUP BY instance_id)"
    ),
    latest_desired=(
        f"SELECT {COLUMNS} FROM audit_records WHERE seq IN ("
        " SELECT MAX(seq) FROM audit_records"
        " WHERE kind IN ('group.created', 'group.rollout', 'group.rollback') AND seq <= ?"
        " GROUP BY group_name)"
    ),
    kind_index=" INDEXED BY audit_records_kind",
    time_index=" INDEXED BY audit_records_at",
)
"""SQLite's spellings; the write lock is ``BEGIN IMMEDIATE``'s, so head reads take none."""

SCHEMA = (
    sql_log.tables(integer="INTEGER")
    + f"""INSERT OR IGNORE INTO audit_head VALUES (1, 0, '{GENESIS_HASH}', 0, 0, '{GENESIS_HASH}');
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_prune_only BEFORE DELETE ON audit_records
WHEN OLD.seq > (SELECT base_seq FROM audit_head WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'audit records are deleted only behind a checkpoint'); END;
"""
)


def install_schema(conn: sqlite3.Connection) -> None:
    """Create the audit tables, indexes and triggers if missing (idempotent).

    Uses ``executescript``, which commits any open transaction first: call it at
    startup, not inside a transaction.
    """
    conn.executescript(SCHEMA)


def append_in(conn: sqlite3.Connection, event: Event) -> Record:
    """Append ``event`` inside the caller's open write transaction and return the record.

    The caller must have begun the transaction with ``BEGIN IMMEDIATE`` (or
    already written in it) so the head it reads cannot change before it commits;
    the caller commits or rolls back, together with its own changes.
    Raises AuditError when no transaction is open.
    """
    if not conn.in_transaction:
        raise AuditError("append_in needs an open write transaction (BEGIN IMMEDIATE)")
    return sql_log.append(conn, event, dialect=DIALECT)


def bulk_append_in(conn: sqlite3.Connection, events: Iterable[Event]) -> Position:
    """Append many events in the caller's write transaction (bulk import, benchmarks)."""
    if not conn.in_transaction:
        raise AuditError("bulk_append_in needs an open write transaction (BEGIN IMMEDIATE)")
    seq, prev, head_ms = sql_log.read_head(conn)
    batch: list[Record] = []
    for event in events:
        record = make_record(seq + 1, prev, clamp(event, head_ms))
        seq, prev, head_ms = record.seq, record.hash, record.event.at_ms
        batch.append(record)
        if len(batch) >= 10_000:
            sql_log.extend(conn, batch, dialect=DIALECT)
            batch = []
    if batch:
        sql_log.extend(conn, batch, dialect=DIALECT)
    return Position(seq, prev)


class SqliteAuditLog(sql_log.SqlAuditLog[sqlite3.Connection]):
    """The ``AuditLog`` port on one SQLite connection (its own, or the store's)."""

    dialect = DIALECT

    def __init__(self, conn: sqlite3.Connection, *, install: bool = True) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        if install:
            install_schema(conn)

    @classmethod
    def open(
        cls, path: str | Path, *, read_only: bool = False, timeout_s: float = 30.0
    ) -> SqliteAuditLog:
        """Open a database file: read-only (auditors; it must exist) or read-write (created).

        Raises AuditError when a read-only file is missing or holds no audit log.
        """
        if read_only:
            try:
                conn = sqlite3.connect(
                    f"{Path(path).resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("SELECT seq FROM audit_head").fetchone()
            except sqlite3.Error as error:
                raise AuditError(f"cannot read an audit log in {path}: {error}") from error
            return cls(conn, install=False)
        conn = sqlite3.connect(
            str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn.in_transaction:
                raise AuditError("the connection is inside a transaction; use append_in")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn
                return
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.rollback()

    def bulk_append(self, events: Iterable[Event]) -> Position:
        """Append many events in one transaction: a valid chain, at insert speed."""
        with self._write() as conn:
            return bulk_append_in(conn, events)
