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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from controller.audit import postgres_queries as pgq
from controller.audit import queries
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

Connection = psycopg.Connection[tuple[Any, ...]]

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
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
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    base_seq BIGINT NOT NULL,
    base_hash TEXT NOT NULL
);
INSERT INTO audit_head VALUES (1, 0, '{GENESIS_HASH}', 0, 0, '{GENESIS_HASH}')
    ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    key_id TEXT,
    signature TEXT
);
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

MIGRATION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('corral.migrate:' || current_schema(), 0))"
)
"""Taken by whatever changes the schema, so replicas starting together take turns."""
_INSERT = (
    f"INSERT INTO audit_records ({pgq.COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


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
    row = conn.execute("SELECT seq, hash, at_ms FROM audit_head WHERE id = 1 FOR UPDATE").fetchone()
    if row is None:
        raise AuditError("the audit_head row is missing: the log was tampered with")
    seq, prev, head_ms = row
    record = make_record(int(seq) + 1, str(prev), clamp(event, int(head_ms)))
    conn.execute(_INSERT, _row(record))
    conn.execute(
        "UPDATE audit_head SET seq = %s, hash = %s, at_ms = %s WHERE id = 1",
        (record.seq, record.hash, record.event.at_ms),
    )
    return record


class PostgresAuditLog:
    """The ``AuditLog`` port on one PostgreSQL connection of its own.

    Reads run in one REPEATABLE READ transaction each, so a query or ``verify``
    sees one snapshot while other replicas keep appending.
    """

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

    def append(self, event: Event) -> Record:
        with self._write() as conn:
            return append_in(conn, event)

    def head(self) -> Position:
        with self._read() as conn:
            seq, digest = _one(conn, "SELECT seq, hash FROM audit_head WHERE id = 1")
        return Position(int(seq), str(digest))

    def records(
        self, *, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[Record]:
        low = since_ms if since_ms is not None else -1
        high = until_ms if until_ms is not None else 2**62
        with self._read() as conn, conn.cursor(name="corral_audit_records") as cursor:
            cursor.execute(
                f"SELECT {pgq.COLUMNS} FROM audit_records"
                " WHERE at_ms BETWEEN %s AND %s ORDER BY seq",
                (low, high),
            )
            for row in cursor:
                yield pgq.record_from_row(row)

    def verify(self, *, key: bytes | None = None) -> VerifyResult:
        with self._read() as conn:
            row = conn.execute(
                "SELECT seq, hash, base_seq, base_hash FROM audit_head WHERE id = 1"
            ).fetchone()
            if row is None:
                problem = "the audit_head row is missing: the log was tampered with"
                return VerifyResult(False, 0, 0, 0, "", None, problem)
            head, base = Position(int(row[0]), row[1]), Position(int(row[2]), row[3])
            with conn.cursor(name="corral_audit_verify") as cursor:
                cursor.execute(f"SELECT {pgq.COLUMNS} FROM audit_records ORDER BY seq")
                result = verify_chain((_StoredRow(r) for r in cursor), base=base, head=head)
            checkpoints = _checkpoints(conn)
            hashes = {
                int(seq): str(digest)
                for seq, digest in conn.execute(
                    "SELECT r.seq, r.hash FROM audit_records r"
                    " JOIN audit_checkpoints c ON c.seq = r.seq"
                )
            }
        return verify_checkpoints(result, checkpoints, hashes, base=base, key=key)

    def checkpoint(self, *, at_ms: int, actor: str, key: bytes | None = None) -> Checkpoint:
        with self._write() as conn:
            seq, digest = _one(conn, "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            state = pgq.state_after(conn, int(seq))
            event = checkpoint_event(Position(int(seq), digest), state, at_ms=at_ms, actor=actor)
            record = append_in(conn, event)
            checkpoint = Checkpoint(
                record.seq,
                record.hash,
                record.event.at_ms,
                key_id(key) if key is not None else None,
                sign_position(key, Position(record.seq, record.hash)) if key is not None else None,
            )
            conn.execute(
                "INSERT INTO audit_checkpoints VALUES (%s, %s, %s, %s, %s)",
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
            return _checkpoints(conn)

    def prune_before(self, checkpoint: Checkpoint) -> int:
        with self._write() as conn:
            conn.execute("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE")
            row = conn.execute(
                "SELECT c.hash, r.prev_hash FROM audit_checkpoints c"
                " JOIN audit_records r ON r.seq = c.seq WHERE c.seq = %s",
                (checkpoint.seq,),
            ).fetchone()
            if row is None or row[0] != checkpoint.hash:
                raise CheckpointError(f"no retained checkpoint at seq {checkpoint.seq}")
            conn.execute(
                "UPDATE audit_head SET base_seq = %s, base_hash = %s WHERE id = 1",
                (checkpoint.seq - 1, row[1]),
            )
            removed = conn.execute(
                "DELETE FROM audit_records WHERE seq < %s", (checkpoint.seq,)
            ).rowcount
            conn.execute("DELETE FROM audit_checkpoints WHERE seq < %s", (checkpoint.seq,))
            return int(removed)

    def conformance_at(self, at_ms: int, *, group: str | None = None) -> queries.Conformance:
        with self._read() as conn:
            return pgq.conformance_at(conn, at_ms, group=group)

    def instance_history(self, instance_id: str) -> queries.InstanceHistory:
        with self._read() as conn:
            return pgq.instance_history(conn, instance_id)

    def image_history(self) -> tuple[queries.ImageHistory, ...]:
        with self._read() as conn:
            return pgq.image_history(conn)


def _one(conn: Connection, query: str) -> tuple[Any, ...]:
    row = conn.execute(query.encode()).fetchone()
    if row is None:
        raise AuditError("the audit_head row is missing: the log was tampered with")
    return row


def _checkpoints(conn: Connection) -> list[Checkpoint]:
    rows = conn.execute(
        "SELECT seq, hash, at_ms, key_id, signature FROM audit_checkpoints ORDER BY seq"
    ).fetchall()
    return [Checkpoint(int(seq), h, int(at), k, s) for seq, h, at, k, s in rows]


def _row(r: Record) -> tuple[object, ...]:
    return (
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
        seq, at_ms, kind, actor, reason, instance, related, group, image, data, prev, _ = self.row
        return stored_body_hash(
            seq=seq,
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
