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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.audit import queries, sqlite_queries
from controller.audit.chain import (
    Checkpoint,
    Position,
    VerifyResult,
    key_id,
    sign_position,
    verify_chain,
    verify_checkpoints,
)
from controller.audit.errors import AuditError, CheckpointError
from controller.audit.record import (
    GENESIS_HASH,
    Event,
    Record,
    canonical_json,
    make_record,
    stored_body_hash,
)
from controller.audit.snapshot import checkpoint_event, clamp
from controller.audit.sqlite_queries import COLUMNS, record_from_row

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    instance_id TEXT,
    related_instance_id TEXT,
    group_name TEXT,
    image TEXT,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records (at_ms);
CREATE INDEX IF NOT EXISTS audit_records_kind ON audit_records (kind, seq);
CREATE INDEX IF NOT EXISTS audit_records_instance
    ON audit_records (instance_id, seq) WHERE instance_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_records_related
    ON audit_records (related_instance_id, seq) WHERE related_instance_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_records_transitions
    ON audit_records (instance_id, seq) WHERE kind = 'instance.state';
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    base_seq INTEGER NOT NULL,
    base_hash TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_head VALUES (1, 0, '{GENESIS_HASH}', 0, 0, '{GENESIS_HASH}');
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    key_id TEXT,
    signature TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_prune_only BEFORE DELETE ON audit_records
WHEN OLD.seq > (SELECT base_seq FROM audit_head WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'audit records are deleted only behind a checkpoint'); END;
"""


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
    seq, prev, head_ms = conn.execute(
        "SELECT seq, hash, at_ms FROM audit_head WHERE id = 1"
    ).fetchone()
    record = make_record(seq + 1, prev, clamp(event, head_ms))
    _insert(conn, [record])
    return record


def bulk_append_in(conn: sqlite3.Connection, events: Iterable[Event]) -> Position:
    """Append many events in the caller's write transaction (bulk import, benchmarks)."""
    if not conn.in_transaction:
        raise AuditError("bulk_append_in needs an open write transaction (BEGIN IMMEDIATE)")
    seq, prev, head_ms = conn.execute(
        "SELECT seq, hash, at_ms FROM audit_head WHERE id = 1"
    ).fetchone()
    batch: list[Record] = []
    for event in events:
        record = make_record(seq + 1, prev, clamp(event, head_ms))
        seq, prev, head_ms = record.seq, record.hash, record.event.at_ms
        batch.append(record)
        if len(batch) >= 10_000:
            _insert(conn, batch)
            batch = []
    if batch:
        _insert(conn, batch)
    return Position(seq, prev)


class SqliteAuditLog:
    """The ``AuditLog`` port on one SQLite connection (its own, or the store's)."""

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

    def append(self, event: Event) -> Record:
        with self._write() as conn:
            return append_in(conn, event)

    def bulk_append(self, events: Iterable[Event]) -> Position:
        """Append many events in one transaction: a valid chain, at insert speed."""
        with self._write() as conn:
            return bulk_append_in(conn, events)

    def head(self) -> Position:
        with self._read() as conn:
            seq, digest = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return Position(seq, digest)

    def records(
        self, *, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[Record]:
        low = since_ms if since_ms is not None else -1
        high = until_ms if until_ms is not None else 2**62
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM audit_records WHERE at_ms BETWEEN ? AND ? ORDER BY seq",
                (low, high),
            )
            for row in rows:
                yield record_from_row(row)

    def verify(self, *, key: bytes | None = None) -> VerifyResult:
        with self._read() as conn:
            row = conn.execute(
                "SELECT seq, hash, base_seq, base_hash FROM audit_head WHERE id = 1"
            ).fetchone()
            if row is None:
                problem = "the audit_head row is missing: the log was tampered with"
                return VerifyResult(False, 0, 0, 0, "", None, problem)
            head, base = Position(row[0], row[1]), Position(row[2], row[3])
            stored = (
                _StoredRow(r)
                for r in conn.execute(f"SELECT {COLUMNS} FROM audit_records ORDER BY seq")
            )
            result = verify_chain(stored, base=base, head=head)
            checkpoints = self._checkpoints(conn)
            hashes = dict(
                conn.execute(
                    "SELECT r.seq, r.hash FROM audit_records r JOIN audit_checkpoints c"
                    " ON c.seq = r.seq"
                ).fetchall()
            )
        return verify_checkpoints(result, checkpoints, hashes, base=base, key=key)

    def checkpoint(self, *, at_ms: int, actor: str, key: bytes | None = None) -> Checkpoint:
        with self._write() as conn:
            seq, digest = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            state = sqlite_queries.state_after(conn, seq)
            record = append_in(
                conn, checkpoint_event(Position(seq, digest), state, at_ms=at_ms, actor=actor)
            )
            position = Position(record.seq, record.hash)
            checkpoint = Checkpoint(
                record.seq,
                record.hash,
                record.event.at_ms,
                key_id(key) if key is not None else None,
                sign_position(key, position) if key is not None else None,
            )
            conn.execute(
                "INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?)",
                (
                    checkpoint.seq,
                    checkpoint.hash,
                    checkpoint.at_ms,
                    checkpoint.key_id,
                    checkpoint.signature,
                ),
            )
        return checkpoint

    def checkpoints(self) -> list[Checkpoint]:
        with self._read() as conn:
            return self._checkpoints(conn)

    @staticmethod
    def _checkpoints(conn: sqlite3.Connection) -> list[Checkpoint]:
        rows = conn.execute(
            "SELECT seq, hash, at_ms, key_id, signature FROM audit_checkpoints ORDER BY seq"
        ).fetchall()
        return [Checkpoint(*row) for row in rows]

    def prune_before(self, checkpoint: Checkpoint) -> int:
        with self._write() as conn:
            row = conn.execute(
                "SELECT c.hash, r.prev_hash FROM audit_checkpoints c"
                " JOIN audit_records r ON r.seq = c.seq WHERE c.seq = ?",
                (checkpoint.seq,),
            ).fetchone()
            if row is None or row[0] != checkpoint.hash:
                raise CheckpointError(f"no retained checkpoint at seq {checkpoint.seq}")
            conn.execute(
                "UPDATE audit_head SET base_seq = ?, base_hash = ? WHERE id = 1",
                (checkpoint.seq - 1, row[1]),
            )
            removed = conn.execute(
                "DELETE FROM audit_records WHERE seq < ?", (checkpoint.seq,)
            ).rowcount
            conn.execute("DELETE FROM audit_checkpoints WHERE seq < ?", (checkpoint.seq,))
            return int(removed)

    def conformance_at(self, at_ms: int, *, group: str | None = None) -> queries.Conformance:
        with self._read() as conn:
            return sqlite_queries.conformance_at(conn, at_ms, group=group)

    def instance_history(self, instance_id: str) -> queries.InstanceHistory:
        with self._read() as conn:
            return sqlite_queries.instance_history(conn, instance_id)

    def image_history(self) -> tuple[queries.ImageHistory, ...]:
        with self._read() as conn:
            return sqlite_queries.image_history(conn)


def _insert(conn: sqlite3.Connection, records: list[Record]) -> None:
    conn.executemany(
        f"INSERT INTO audit_records ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.seq,
                r.event.at_ms,
                str(r.event.kind),
                r.event.actor,
                r.event.reason,
                r.event.instance_id,
                r.event.related_instance_id,
                r.event.group,
                r.event.image,
                canonical_json(dict(r.event.data)).decode("utf-8"),
                r.prev_hash,
                r.hash,
            )
            for r in records
        ],
    )
    last = records[-1]
    conn.execute(
        "UPDATE audit_head SET seq = ?, hash = ?, at_ms = ? WHERE id = 1",
        (last.seq, last.hash, last.event.at_ms),
    )


@dataclass(frozen=True, slots=True)
class _StoredRow:
    """A row as stored, hashed without trusting any column (verification only)."""

    row: tuple[Any, ...]

    @property
    def seq(self) -> int:
        return int(self.row[0])

    @property
    def prev_hash(self) -> str:
        return str(self.row[10])

    @property
    def hash(self) -> str:
        return str(self.row[11])

    def digest(self) -> str:
        _, at_ms, kind, actor, reason, instance, related, group, image, data, prev, _ = self.row
        return stored_body_hash(
            seq=self.row[0],
            prev=prev,
            at_ms=at_ms,
            kind=kind,
            actor=actor,
            reason=reason,
            instance=instance,
            related=related,
            group=group,
            image=image,
            data_text=data,
        )
