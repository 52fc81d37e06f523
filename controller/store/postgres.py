"""The scale-out store: PostgreSQL shared by several controller replicas.

Why no cache: every replica writes, so a record cached here could be stale the
moment another replica commits. Groups, instances and replacements are read
through to the database on every call; each read is one indexed statement on a
loopback or LAN round trip (a report costs three short reads and one write).
Only image records are cached, and only once found: a registered image is
immutable and never deleted, so a cached one can never be wrong.

Heartbeats (``durable=False``) are not buffered in memory either: they are
written at once in a transaction with ``synchronous_commit = off``, which
returns without waiting for the WAL flush. Every replica sees them at once; a
server crash loses at most the last few hundred milliseconds of heartbeats,
never a state change. :meth:`PostgresStore.flush` commits one synchronous
transaction, which flushes the WAL (and so every heartbeat before it).

Every write of a row, heartbeats included, is ``UPDATE … WHERE key = ? AND
version = ?`` (or an insert that does nothing when the row exists): a writer
whose read is stale — a replica's staleness sweep that read an instance just
before another replica tainted it — changes nothing and gets ConflictError. A
trigger refuses, in the database itself, any update that would take a tainted,
replacing or retired instance back.

Every durable write and its audit events commit in one transaction
(:func:`controller.audit.postgres.append_in` locks the audit head row, so
replicas never fork the chain). Unique constraints keep the image registry
immutable under concurrent registrations: a racing insert finds the other's
row and gets the same AlreadyExistsError as a sequential one.

One connection per store, serialised by a lock (the controller calls the store
from its event loop, so there is little to gain from a pool); a broken
connection is replaced on the next call. Auditors read through a second
connection (:meth:`PostgresStore.audit_log`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import psycopg
from psycopg import errors, sql

from controller.audit import AuditLog, Event
from controller.audit.postgres import (
    MIGRATION_LOCK,
    PostgresAuditLog,
    append_in,
    install_schema,
)
from controller.domain.model import Group, ImageRecord, Instance
from controller.domain.replacement_record import ReplacementRecord
from controller.errors import NotFoundError, UnavailableError
from controller.store.codec import (
    GROUP_COLUMNS,
    IMAGE_COLUMNS,
    INSTANCE_COLUMNS,
    group_from_row,
    group_to_row,
    image_from_row,
    image_to_row,
    instance_from_row,
    instance_to_row,
)
from controller.store.postgres_leadership import GROUP_CHANNEL
from controller.store.replacement_rows import (
    INSERT_REPLACEMENT,
    REPLACEMENT_COLUMNS,
    UPDATE_REPLACEMENT,
    replacement_from_row,
    replacement_to_row,
    update_params,
)
from controller.store.rules import check_new_image, check_same_group, check_version
from controller.store.schema import (
    CREATE_MIGRATIONS_TABLE,
    INSERT_GROUP,
    INSERT_INSTANCE,
    POSTGRES_GUARDS,
    RECORD_MIGRATION,
    UPDATE_GROUP,
    UPDATE_INSTANCE,
    cas_params,
    migrations,
)

log = logging.getLogger(__name__)
Connection = psycopg.Connection[tuple[Any, ...]]

MIGRATIONS = migrations(binary="BYTEA", taint="JSONB", guards=POSTGRES_GUARDS)


def _pg(statement: str) -> str:
    """A shared (qmark) statement in psycopg's placeholders."""
    return statement.replace("?", "%s")


_SELECT_INSTANCES = "SELECT " + ", ".join(
    "taint::text" if c == "taint" else c for c in INSTANCE_COLUMNS
)
_INSERT_INSTANCE = _pg(INSERT_INSTANCE) + " RETURNING id"
_UPDATE_INSTANCE = _pg(UPDATE_INSTANCE)
_INSERT_GROUP = _pg(INSERT_GROUP) + " RETURNING name"
_NOTIFY_GROUP = f"SELECT pg_notify('{GROUP_CHANNEL}', current_schema() || '/' || %s)"
_UPDATE_GROUP = _pg(UPDATE_GROUP)
_SELECT_REPLACEMENTS = f"SELECT {', '.join(REPLACEMENT_COLUMNS)} FROM replacements"


class PostgresStore:
    """:class:`controller.ports.Store` on a PostgreSQL database shared by replicas.

    ``schema`` (optional) is created if missing and put first on the search path,
    so several fleets (or tests) can share one database.
    """

    def __init__(self, conninfo: str, *, schema: str | None = None) -> None:
        self._conninfo = conninfo
        self._schema = schema
        self._lock = threading.RLock()
        self._images: dict[str, ImageRecord] = {}
        """Found images by ref and by digest (immutable, so never stale)."""
        self._heartbeats_pending = False
        self._audit_reader: PostgresAuditLog | None = None
        self._closed = False
        self._db = self._connect()
        migrate(self._db)
        install_schema(self._db)

    # Images -------------------------------------------------------------------

    def add_image(
        self, image: ImageRecord, manifest: bytes, *, audit: Sequence[Event] = ()
    ) -> bool:
        if check_new_image(
            image, self.get_image_by_ref(image.ref), self.get_image_by_digest(image.digest)
        ):
            return False
        with self._transaction() as db:
            db.execute(
                "INSERT INTO manifests (digest, body) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (image.manifest_digest, manifest),
            )
            created = db.execute(
                f"INSERT INTO images ({IMAGE_COLUMNS}) VALUES ({_marks(10)}) "
                "ON CONFLICT DO NOTHING RETURNING ref",
                image_to_row(image),
            ).fetchone()
            if created is None:  # another replica registered the ref or digest meanwhile
                by_ref = self._image_where(db, "ref", image.ref)
                by_digest = self._image_where(db, "digest", image.digest)
                check_new_image(image, by_ref, by_digest)
                return False
            _append(db, audit)
        return True

    def get_image_by_ref(self, ref: str) -> ImageRecord | None:
        return self._image("ref", ref)

    def get_image_by_digest(self, digest: str) -> ImageRecord | None:
        return self._image("digest", digest)

    def list_images(self) -> list[ImageRecord]:
        rows = self._query(f"SELECT {IMAGE_COLUMNS} FROM images ORDER BY registered_at, ref")
        return [image_from_row(r) for r in rows]

    def get_manifest(self, manifest_digest: str) -> bytes:
        rows = self._query("SELECT body FROM manifests WHERE digest = %s", (manifest_digest,))
        if not rows:
            raise NotFoundError(f"no manifest {manifest_digest} is stored")
        return bytes(rows[0][0])

    # Groups -------------------------------------------------------------------

    def add_group(self, group: Group, *, audit: Sequence[Event] = ()) -> bool:
        with self._transaction() as db:
            created = db.execute(_INSERT_GROUP, group_to_row(replace(group, version=1))).fetchone()
            if created is None:
                row = db.execute(
                    f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = %s", (group.name,)
                ).fetchone()
                assert row is not None  # the conflict was on this very name
                return check_same_group(group, group_from_row(row))
            _append(db, audit)
        return True

    def update_group(self, group: Group, *, audit: Sequence[Event] = ()) -> Group:
        saved = replace(group, version=group.version + 1)
        with self._transaction() as db:
            if db.execute(_UPDATE_GROUP, cas_params(group_to_row(saved), group.version)).rowcount:
                _append(db, audit)
                return saved
            _lost_race(
                db,
                "group",
                group.name,
                group.version,
                missing=f"group {group.name!r} is not declared",
            )

    def get_group(self, name: str) -> Group | None:
        rows = self._query(f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = %s", (name,))
        return group_from_row(rows[0]) if rows else None

    def list_groups(self) -> list[Group]:
        rows = self._query(f"SELECT {GROUP_COLUMNS} FROM groups ORDER BY name")
        return [group_from_row(r) for r in rows]

    # Instances ----------------------------------------------------------------

    def get_instance(self, instance_id: str) -> Instance | None:
        rows = self._query(f"{_SELECT_INSTANCES} FROM instances WHERE id = %s", (instance_id,))
        return instance_from_row(rows[0]) if rows else None

    def list_instances(self, group: str = "") -> list[Instance]:
        if group:
            rows = self._query(
                f"{_SELECT_INSTANCES} FROM instances WHERE group_name = %s ORDER BY id", (group,)
            )
        else:
            rows = self._query(f"{_SELECT_INSTANCES} FROM instances ORDER BY id")
        return [instance_from_row(r) for r in rows]

    def save_instance(
        self, instance: Instance, *, durable: bool = True, audit: Sequence[Event] = ()
    ) -> Instance:
        saved = replace(instance, version=instance.version + 1)
        row = instance_to_row(saved)
        heartbeat = not durable and not audit
        with self._transaction() as db:
            if heartbeat:
                db.execute("SET LOCAL synchronous_commit = off")
            try:
                if instance.version == 0:
                    written = db.execute(_INSERT_INSTANCE, row).fetchone() is not None
                else:
                    written = (
                        db.execute(_UPDATE_INSTANCE, cas_params(row, instance.version)).rowcount > 0
                    )
            except errors.ForeignKeyViolation:
                raise NotFoundError(f"group {instance.group!r} is not declared") from None
            if not written:
                _lost_race(db, "instance", instance.id, instance.version)
            _append(db, audit)
            if not heartbeat:  # the leader replica plans the group at its next tick
                db.execute(_NOTIFY_GROUP, (instance.group,))
        if heartbeat:
            self._heartbeats_pending = True
        return saved

    def delete_retired(self, instance: Instance) -> bool:
        with self._transaction() as db:
            deleted = db.execute(
                "DELETE FROM instances WHERE id = %s AND version = %s AND state = 'retired'",
                (instance.id, instance.version),
            )
            return deleted.rowcount > 0

    # Replacements (always durable: they are written before any provider call) ------

    def add_replacement(self, record: ReplacementRecord, *, audit: Sequence[Event] = ()) -> bool:
        with self._transaction() as db:
            try:
                created = db.execute(
                    _pg(INSERT_REPLACEMENT) + " RETURNING id",
                    replacement_to_row(replace(record, version=1)),
                ).fetchone()
            except errors.ForeignKeyViolation:
                raise NotFoundError(f"group {record.group!r} is not declared") from None
            if created is None:
                return False
            _append(db, audit)
        return True

    def update_replacement(
        self, record: ReplacementRecord, *, audit: Sequence[Event] = ()
    ) -> ReplacementRecord:
        with self._transaction() as db:
            if db.execute(_pg(UPDATE_REPLACEMENT), update_params(record)).rowcount:
                _append(db, audit)
                return replace(record, version=record.version + 1)
            _lost_race(
                db,
                "replacement",
                record.replacement_id,
                record.version,
                missing=f"no replacement {record.replacement_id!r} is recorded",
            )

    def get_replacement(self, replacement_id: str) -> ReplacementRecord | None:
        rows = self._query(f"{_SELECT_REPLACEMENTS} WHERE id = %s", (replacement_id,))
        return replacement_from_row(rows[0]) if rows else None

    def list_replacements(self, group: str = "") -> list[ReplacementRecord]:
        where, params = ("WHERE group_name = %s ", (group,)) if group else ("", ())
        rows = self._query(f"{_SELECT_REPLACEMENTS} {where}ORDER BY recorded_at, id", params)
        return [replacement_from_row(r) for r in rows]

    # The rest -----------------------------------------------------------------

    def audit_log(self) -> AuditLog:
        """A reader on its own connection (opened on first use)."""
        with self._lock:
            if self._audit_reader is None:
                self._audit_reader = PostgresAuditLog(self._connect(), install=False)
            return self._audit_reader

    def flush(self) -> None:
        """Wait until every heartbeat committed so far is on the server's disk."""
        if not self._heartbeats_pending:
            return
        self._heartbeats_pending = False
        with self._transaction() as db:
            # A transaction with an id writes a commit record; a synchronous commit
            # flushes the WAL up to it, with every asynchronous commit before it.
            db.execute("SELECT pg_current_xact_id()")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._db.broken:
                    self.flush()
            finally:
                if self._audit_reader is not None:
                    self._audit_reader.close()
                self._db.close()

    # Internals ----------------------------------------------------------------

    def _connect(self) -> Connection:
        """A new autocommit connection on the store's schema.

        Raises UnavailableError (the DSN, which may hold a password, is never in it).
        """
        try:
            db: Connection = psycopg.connect(self._conninfo, autocommit=True)
            if self._schema:
                name = sql.Identifier(self._schema)
                db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
                db.execute(sql.SQL("SET search_path TO {}").format(name))
        except psycopg.Error as error:
            raise UnavailableError(
                f"cannot connect to PostgreSQL: {_summary(error)}", reason="store_unavailable"
            ) from None
        return db

    def _live(self) -> Connection:
        if self._db.closed or self._db.broken:
            if self._closed:
                raise UnavailableError("the store is closed", reason="store_unavailable")
            log.warning("the PostgreSQL connection was lost; reconnecting")
            self._db = self._connect()
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._lock, _unavailable():
            db = self._live()
            with db.transaction():
                yield db

    def _query(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock, _unavailable():
            return self._live().execute(query, params).fetchall()

    def _image(self, column: str, value: str) -> ImageRecord | None:
        key = f"{column}:{value}"
        found = self._images.get(key)
        if found is None:
            with self._lock, _unavailable():
                found = self._image_where(self._live(), column, value)
        return found

    def _image_where(self, db: Connection, column: str, value: str) -> ImageRecord | None:
        row = db.execute(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE {column} = %s", (value,)
        ).fetchone()
        if row is None:
            return None
        image = image_from_row(row)
        self._images[f"ref:{image.ref}"] = self._images[f"digest:{image.digest}"] = image
        return image


def _append(db: Connection, audit: Sequence[Event]) -> None:
    """Append ``audit`` inside the open transaction (rolled back with it)."""
    for event in audit:
        append_in(db, event)


@dataclass(frozen=True)
class _Row:
    """A stored row's version, for :func:`check_version`'s message."""

    version: int


_VERSION_OF = {
    "group": "SELECT version FROM groups WHERE name = %s",
    "instance": "SELECT version FROM instances WHERE id = %s",
    "replacement": "SELECT version FROM replacements WHERE id = %s",
}


def _lost_race(
    db: Connection, kind: str, key: str, expected: int, *, missing: str | None = None
) -> NoReturn:
    """A compare-and-set wrote nothing: raise NotFoundError (``missing``, when the row is
    gone and that is its own error) or ConflictError naming the stored version."""
    row = db.execute(_VERSION_OF[kind], (key,)).fetchone()
    if row is None and missing is not None:
        raise NotFoundError(missing)
    check_version(kind, key, None if row is None else _Row(int(row[0])), expected)
    raise AssertionError("unreachable: check_version raises when the versions differ")


def _marks(count: int) -> str:
    return ", ".join("%s" for _ in range(count))


def _summary(error: psycopg.Error) -> str:
    """The server's or libpq's first line, without the connection string."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


@contextmanager
def _unavailable() -> Iterator[None]:
    """Connection failures as UnavailableError; SQL errors (bugs) propagate as they are."""
    try:
        yield
    except psycopg.OperationalError as error:
        raise UnavailableError(
            f"PostgreSQL is unavailable: {_summary(error)}", reason="store_unavailable"
        ) from error


def migrate(db: Connection) -> int:
    """Apply every migration step not applied yet; returns the schema version.

    Replicas starting together take turns on a per-schema advisory lock.
    """
    with db.transaction():
        db.execute(MIGRATION_LOCK)
        db.execute(CREATE_MIGRATIONS_TABLE)
        applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
        for version, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                db.execute(statement)
            db.execute(_pg(RECORD_MIGRATION), (version, time.time()))
    return max(version for version, _ in MIGRATIONS)
