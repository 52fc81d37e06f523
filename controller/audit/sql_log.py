"""The SQL audit logs' chain, written once: what SQLite and PostgreSQL do the same way.

Both keep the records in ``audit_records`` (``seq`` the primary key), the
latest (seq, hash) and the pruning base in the single ``audit_head`` row, and
the checkpoints in ``audit_checkpoints``. :class:`SqlAuditLog` implements the
``AuditLog`` port on those tables; an adapter subclass opens the connection,
gives its transactions (``_read``, ``_write``), its :class:`Dialect` and, if it
streams large results its own way, ``_stream``. The tables and indexes are
written once too (:func:`tables`); the head row's insert, the triggers and the
locking stay in the adapters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from controller.audit import queries
from controller.audit import sql_queries as sq
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
from controller.audit.record import Event, Record, canonical_json, make_record
from controller.audit.row import Row, record_from_row
from controller.audit.snapshot import checkpoint_event, clamp

INSERT_RECORD = f"INSERT INTO audit_records ({sq.COLUMNS}) VALUES ({', '.join('?' * 12)})"
RECORDS = (
    f"SELECT {sq.COLUMNS} FROM audit_records WHERE seq BETWEEN"
    " (SELECT MIN(seq) FROM audit_records{index} WHERE at_ms >= ?)"
    " AND (SELECT MAX(seq) FROM audit_records{index} WHERE at_ms <= ?)"
    " AND +at_ms BETWEEN ? AND ? ORDER BY seq"
)
"""Records in a time range, in chain order: the seq range of that time (its ends found
by the time index) read in seq order, each time checked again (``+at_ms`` keeps the
planner on the seq order; by the time index every row found would be sorted again)."""
UPDATE_HEAD = "UPDATE audit_head SET seq = ?, hash = ?, at_ms = ? WHERE id = 1"
MISSING_HEAD = "the audit_head row is missing: the log was tampered with"


def tables(*, integer: str) -> str:
    """The audit tables and indexes; ``integer`` is the type of seqs and times.

    SQLite's ``INTEGER`` is 64-bit and makes ``seq`` the rowid; PostgreSQL's is ``BIGINT``.
    """
    return f"""
CREATE TABLE IF NOT EXISTS audit_records (
    seq {integer} PRIMARY KEY,
    at_ms {integer} NOT NULL,
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
    seq {integer} NOT NULL,
    hash TEXT NOT NULL,
    at_ms {integer} NOT NULL,
    base_seq {integer} NOT NULL,
    base_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq {integer} PRIMARY KEY,
    hash TEXT NOT NULL,
    at_ms {integer} NOT NULL,
    key_id TEXT,
    signature TEXT
);
"""


class _Batch(Protocol):
    def executemany(self, query: str, params: Sequence[Sequence[Any]], /) -> object: ...


class Connection(sq.Connection, Protocol):
    """A connection that can also insert many rows at once."""

    def cursor(self) -> _Batch: ...


C = TypeVar("C", bound=Connection)


def read_head(conn: sq.Connection, *, lock: str = "") -> tuple[int, str, int]:
    """The head's (seq, hash, at_ms), read with ``lock``; raises AuditError when it is gone."""
    row = conn.execute(f"SELECT seq, hash, at_ms FROM audit_head WHERE id = 1{lock}").fetchone()
    if row is None:
        raise AuditError(MISSING_HEAD)
    return int(row[0]), str(row[1]), int(row[2])


def extend(conn: Connection, records: Sequence[Record], *, dialect: sq.Dialect) -> None:
    """Insert ``records`` (the chain's next links, in order) and move the head to the last."""
    conn.cursor().executemany(dialect.sql(INSERT_RECORD), [record_row(r) for r in records])
    last = records[-1]
    conn.execute(dialect.sql(UPDATE_HEAD), (last.seq, last.hash, last.event.at_ms))


def append(conn: Connection, event: Event, *, dialect: sq.Dialect) -> Record:
    """Append ``event`` inside the caller's write transaction and return the record."""
    seq, prev, head_ms = read_head(conn, lock=dialect.lock)
    record = make_record(seq + 1, prev, clamp(event, head_ms))
    extend(conn, [record], dialect=dialect)
    return record


def record_row(r: Record) -> tuple[object, ...]:
    """A record as the ``COLUMNS`` of its row; ``data`` as its exact canonical text."""
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


class SqlAuditLog(Generic[C]):
    """The ``AuditLog`` port on the audit tables; subclasses give the connection's side."""

    dialect: ClassVar[sq.Dialect]

    def _read(self) -> AbstractContextManager[C]:
        """One snapshot to read from (the caller's transaction, if one is open)."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[C]:
        """One write transaction, committed at the end, rolled back on an exception."""
        raise NotImplementedError

    def _stream(
        self, conn: C, query: str, params: Sequence[Any] = (), *, name: str
    ) -> Iterator[Any]:
        """The rows of ``query``; ``name`` names a server-side cursor where there is one."""
        yield from conn.execute(query, params)

    def append(self, event: Event) -> Record:
        with self._write() as conn:
            return append(conn, event, dialect=self.dialect)

    def head(self) -> Position:
        with self._read() as conn:
            seq, digest, _ = read_head(conn)
        return Position(seq, digest)

    def rows(self, *, since_ms: int | None = None, until_ms: int | None = None) -> Iterator[Row]:
        low = since_ms if since_ms is not None else -1
        high = until_ms if until_ms is not None else 2**62
        query = self.dialect.sql(RECORDS.format(index=self.dialect.time_index))
        with self._read() as conn:
            yield from self._stream(conn, query, (low, high, low, high), name="corral_audit_rows")

    def records(
        self, *, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[Record]:
        return map(record_from_row, self.rows(since_ms=since_ms, until_ms=until_ms))

    def verify(self, *, key: bytes | None = None) -> VerifyResult:
        with self._read() as conn:
            row = conn.execute(
                "SELECT seq, hash, base_seq, base_hash FROM audit_head WHERE id = 1"
            ).fetchone()
            if row is None:
                return VerifyResult(False, 0, 0, 0, "", None, MISSING_HEAD)
            head, base = Position(int(row[0]), row[1]), Position(int(row[2]), row[3])
            stored = self._stream(
                conn,
                f"SELECT {sq.COLUMNS} FROM audit_records ORDER BY seq",
                name="corral_audit_verify",
            )
            result = verify_chain(stored, base=base, head=head)
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
            seq, digest, _ = read_head(conn, lock=self.dialect.lock)
            state = sq.state_after(conn, seq, dialect=self.dialect)
            event = checkpoint_event(Position(seq, digest), state, at_ms=at_ms, actor=actor)
            record = append(conn, event, dialect=self.dialect)
            checkpoint = Checkpoint(
                record.seq,
                record.hash,
                record.event.at_ms,
                key_id(key) if key is not None else None,
                sign_position(key, Position(record.seq, record.hash)) if key is not None else None,
            )
            conn.execute(
                self.dialect.sql("INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?)"),
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
        sql = self.dialect.sql
        with self._write() as conn:
            if self.dialect.lock:  # appends from other connections wait for the commit
                conn.execute(f"SELECT 1 FROM audit_head WHERE id = 1{self.dialect.lock}")
            row = conn.execute(
                sql(
                    "SELECT c.hash, r.prev_hash FROM audit_checkpoints c"
                    " JOIN audit_records r ON r.seq = c.seq WHERE c.seq = ?"
                ),
                (checkpoint.seq,),
            ).fetchone()
            if row is None or row[0] != checkpoint.hash:
                raise CheckpointError(f"no retained checkpoint at seq {checkpoint.seq}")
            conn.execute(
                sql("UPDATE audit_head SET base_seq = ?, base_hash = ? WHERE id = 1"),
                (checkpoint.seq - 1, row[1]),
            )
            removed = conn.execute(
                sql("DELETE FROM audit_records WHERE seq < ?"), (checkpoint.seq,)
            ).rowcount
            conn.execute(sql("DELETE FROM audit_checkpoints WHERE seq < ?"), (checkpoint.seq,))
            return int(removed)

    def conformance_at(self, at_ms: int, *, group: str | None = None) -> queries.Conformance:
        with self._read() as conn:
            return sq.conformance_at(conn, at_ms, dialect=self.dialect, group=group)

    def instance_history(self, instance_id: str) -> queries.InstanceHistory:
        with self._read() as conn:
            return sq.instance_history(conn, instance_id, dialect=self.dialect)

    def image_history(self) -> tuple[queries.ImageHistory, ...]:
        with self._read() as conn:
            return sq.image_history(conn, dialect=self.dialect)


def _checkpoints(conn: sq.Connection) -> list[Checkpoint]:
    rows = conn.execute(
        "SELECT seq, hash, at_ms, key_id, signature FROM audit_checkpoints ORDER BY seq"
    ).fetchall()
    return [Checkpoint(int(seq), h, int(at), k, s) for seq, h, at, k, s in rows]
