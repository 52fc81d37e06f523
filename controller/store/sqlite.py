"""The embedded store: SQLite in WAL mode, with an in-memory read cache.

Why the cache: an agent reports every few seconds and a controller carries tens of
thousands of agents, so the hot path (look up the instance, decide, save) must
not wait on SQL. Every record is loaded at open and served from memory; writes
go to SQLite.

Durability: a ``durable`` save (a new instance, a state change, a taint) is
committed (``synchronous=FULL``) before :meth:`SqliteStore.save_instance`
returns. A steady-state heartbeat (``durable=False``: same state, newer seq) is
written behind by a flusher thread every ``flush_interval`` seconds in one
transaction; a crash loses at most that interval of heartbeats, never a state
transition. The calls are synchronous and short; the gRPC server calls them on
its event loop (durable writes are rare, one small transaction each).

A heartbeat saved behind may change only what an agent reports every time (root,
times, sequence, boot, footprint, image); one that would change a state, a taint
or anything else an audit event describes is refused (ControllerError), so such a
change can never wait in memory. The flush writes the rows whose only changes
since their last durable write are heartbeat fields with a single ``UPDATE …
FROM json_each(?)`` statement: Python's sqlite3 module releases and retakes the
GIL around every step, so ``executemany`` over thousands of rows would hand the
GIL back and forth with the event loop thousands of times a second, while one
statement is one step (the rows' roots travel as one blob, sliced by offset).
The few rows that changed an image field are upserted whole.

Audit: the audit tables (:mod:`controller.audit.sqlite`) live in the same file.
Every durable write appends its audit events with ``append_in`` inside its own
``BEGIN IMMEDIATE`` transaction, so a state change and its records commit or
roll back together; a crash cannot keep one without the other. Heartbeats
written behind carry no audit events. Auditors read through a separate
read-only connection (:meth:`SqliteStore.audit_log`), so a long query or
``verify`` never holds the writer's lock.

The SQL is portable (``ON CONFLICT … DO UPDATE``, no SQLite-only types) so a
PostgreSQL adapter can share the schema and :mod:`controller.store.codec`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from controller.audit import AuditLog, Event, SqliteAuditLog, append_in, install_schema
from controller.domain.model import Group, ImageRecord, Instance
from controller.domain.replacement_record import ReplacementRecord
from controller.errors import ControllerError, NotFoundError
from controller.store.cached import CachedReads
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
from controller.store.replacement_rows import (
    INSERT_REPLACEMENT,
    SELECT_REPLACEMENTS,
    UPDATE_REPLACEMENT,
    replacement_from_row,
    replacement_to_row,
    update_params,
)
from controller.store.rules import check_new_image, check_same_group, check_version, is_deletable
from controller.store.schema import (
    CREATE_MIGRATIONS_TABLE,
    INSERT_GROUP,
    RECORD_MIGRATION,
    SQLITE_GUARDS,
    UPDATE_GROUP,
    UPSERT_INSTANCE,
    cas_params,
    migrations,
)
from controller.store.sqlite_faults import storage_faults
from controller.store.sqlite_open import claim

log = logging.getLogger(__name__)

MIGRATIONS = migrations(binary="BLOB", taint="TEXT", guards=SQLITE_GUARDS)


class SqliteStore(CachedReads):
    """:class:`controller.ports.Store` on one SQLite file in ``data_dir``."""

    def __init__(self, data_dir: Path, *, init: bool = False) -> None:
        self._data_dir = claim(data_dir, init=init)
        self.path = self._data_dir.db_path
        self._lock = threading.RLock()
        try:
            fresh = not self.path.exists()
            with storage_faults():
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.execute("PRAGMA foreign_keys = ON")
                self._db.execute("PRAGMA busy_timeout = 5000")
                migrate(self._db)
                install_schema(self._db)
                if fresh:  # the schema in the main file, so a lost log cannot unmake it
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._load()
            self._data_dir.mark(clean=False)
        except BaseException:
            self._data_dir.release()
            raise
        self._audit_reader: SqliteAuditLog | None = None
        # Instances saved behind since their last durable write: True when a field
        # besides the heartbeat columns changed too (the whole row is upserted).
        self._dirty: dict[str, bool] = {}
        # _lock serialises SQL; _cache_lock guards the dicts and is held briefly, except
        # across a durable save (rare), so a heartbeat never waits for a flush.
        self._cache_lock = threading.Lock()
        self._closed = False

    def _load(self) -> None:
        """Every record into memory (the store's authority from now on)."""
        images = [image_from_row(r) for r in self._db.execute(_select_images())]
        self._images_by_ref = {i.ref: i for i in images}
        self._images_by_digest = {i.digest: i for i in images}
        self._groups = {g.name: g for g in map(group_from_row, self._db.execute(_select_groups()))}
        self._instances = {
            i.id: i
            for i in map(
                instance_from_row,
                self._db.execute(f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances"),
            )
        }
        self._replacements = {
            r.replacement_id: r
            for r in map(replacement_from_row, self._db.execute(SELECT_REPLACEMENTS))
        }

    # Images -------------------------------------------------------------------

    def add_image(
        self, image: ImageRecord, manifest: bytes, *, audit: Sequence[Event] = ()
    ) -> bool:
        with self._lock:
            if check_new_image(
                image, self.get_image_by_ref(image.ref), self.get_image_by_digest(image.digest)
            ):
                return False
            with self._transaction():
                self._db.execute(
                    "INSERT INTO manifests (digest, body) VALUES (?, ?) "
                    "ON CONFLICT(digest) DO NOTHING",
                    (image.manifest_digest, manifest),
                )
                self._db.execute(
                    f"INSERT INTO images ({IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    image_to_row(image),
                )
                self._append(audit)
            self._images_by_ref[image.ref] = image
            self._images_by_digest[image.digest] = image
            return True

    def get_manifest(self, manifest_digest: str) -> bytes:
        with self._lock, storage_faults():
            row = self._db.execute(
                "SELECT body FROM manifests WHERE digest = ?", (manifest_digest,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no manifest {manifest_digest} is stored")
        return bytes(row[0])

    # Groups -------------------------------------------------------------------

    def add_group(self, group: Group, *, audit: Sequence[Event] = ()) -> bool:
        with self._lock:
            existing = self._groups.get(group.name)
            if existing is not None:
                return check_same_group(group, existing)
            created = replace(group, version=1)
            with self._transaction():
                self._db.execute(INSERT_GROUP, group_to_row(created))
                self._append(audit)
            self._groups[group.name] = created
            return True

    def update_group(self, group: Group, *, audit: Sequence[Event] = ()) -> Group:
        with self._lock:
            stored = self._groups.get(group.name)
            if stored is None:
                raise NotFoundError(f"group {group.name!r} is not declared")
            saved = replace(
                group, version=check_version("group", group.name, stored, group.version)
            )
            with self._transaction():
                self._db.execute(UPDATE_GROUP, cas_params(group_to_row(saved), group.version))
                self._append(audit)
            self._groups[group.name] = saved
            return saved

    # Instances ----------------------------------------------------------------

    def save_instance(
        self, instance: Instance, *, durable: bool = True, audit: Sequence[Event] = ()
    ) -> Instance:
        # The rows in memory are the store's authority (one controller owns the
        # file: see DataDirLock), so the compare-and-set is against them; the SQL
        # write that follows is a plain upsert of the row they hold.
        if instance.group not in self._groups:
            raise NotFoundError(f"group {instance.group!r} is not declared")
        if durable or audit:
            # Heartbeats wait for this commit (they take the cache lock): durable
            # saves are rare, and a heartbeat in between would change the version.
            with self._lock, self._cache_lock:
                before = self._instances.get(instance.id)
                saved = replace(
                    instance,
                    version=check_version("instance", instance.id, before, instance.version),
                )
                with self._transaction():
                    self._db.execute(UPSERT_INSTANCE, instance_to_row(saved))
                    self._append(audit)
                self._dirty.pop(instance.id, None)
                self._instances[instance.id] = saved
            return saved
        # Hot path: no SQL and no wait on a flush in progress.
        with self._cache_lock:
            before = self._instances.get(instance.id)
            version = check_version("instance", instance.id, before, instance.version)
            whole = _heartbeat_change(before, instance)
            self._dirty[instance.id] = whole or self._dirty.get(instance.id, False)
            saved = self._instances[instance.id] = replace(instance, version=version)
        return saved

    def delete_retired(self, instance: Instance) -> bool:
        with self._lock, self._cache_lock:
            if not is_deletable(self._instances.get(instance.id), instance):
                return False
            with self._transaction():
                self._db.execute("DELETE FROM instances WHERE id = ?", (instance.id,))
            self._dirty.pop(instance.id, None)
            del self._instances[instance.id]
            return True

    # Replacements (always durable: they are written before any provider call) ------

    def add_replacement(self, record: ReplacementRecord, *, audit: Sequence[Event] = ()) -> bool:
        with self._lock:
            if record.group not in self._groups:
                raise NotFoundError(f"group {record.group!r} is not declared")
            if record.replacement_id in self._replacements:
                return False
            created = replace(record, version=1)
            with self._transaction():
                self._db.execute(INSERT_REPLACEMENT, replacement_to_row(created))
                self._append(audit)
            self._replacements[record.replacement_id] = created
            return True

    def update_replacement(
        self, record: ReplacementRecord, *, audit: Sequence[Event] = ()
    ) -> ReplacementRecord:
        with self._lock:
            stored = self._replacements.get(record.replacement_id)
            if stored is None:
                raise NotFoundError(f"no replacement {record.replacement_id!r} is recorded")
            saved = replace(
                record,
                version=check_version("replacement", record.replacement_id, stored, record.version),
            )
            with self._transaction():
                self._db.execute(UPDATE_REPLACEMENT, update_params(record))
                self._append(audit)
            self._replacements[record.replacement_id] = saved
            return saved

    def audit_log(self) -> AuditLog:
        """A read-only view on its own connection (opened on first use)."""
        with self._lock:
            if self._audit_reader is None:
                self._audit_reader = SqliteAuditLog.open(self.path, read_only=True)
            return self._audit_reader

    def flush(self) -> None:
        with self._lock:
            with self._cache_lock:
                dirty, self._dirty = self._dirty, {}
                pending = [(self._instances[i], whole) for i, whole in dirty.items()]
            if not pending:
                return
            try:
                with self._transaction():
                    whole = [instance for instance, full in pending if full]
                    beats = [instance for instance, full in pending if not full]
                    if whole:
                        self._db.executemany(UPSERT_INSTANCE, map(instance_to_row, whole))
                    if beats:
                        self._db.execute(HEARTBEAT_UPDATE, heartbeat_params(beats))
            except BaseException:
                with self._cache_lock:
                    for instance_id, full in dirty.items():
                        self._dirty[instance_id] = full or self._dirty.get(instance_id, False)
                raise

    def close(self) -> None:
        """Flush, checkpoint the log into the main file, mark the stop clean, unlock."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._lock:
                if self._audit_reader is not None:
                    self._audit_reader.close()
                self.flush()
                with storage_faults():
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._data_dir.mark(clean=True)
                self._db.close()
        finally:
            self._data_dir.release()

    # Internals ----------------------------------------------------------------

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return _transaction(self._db)

    def _append(self, audit: Sequence[Event]) -> None:
        """Append ``audit`` inside the open write transaction (rolled back with it)."""
        for event in audit:
            append_in(self._db, event)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN … COMMIT, or ROLLBACK when the block raises (a failed write changes nothing).

    Storage faults (disk full, I/O error, a locked or damaged file), in the block or
    at the commit, leave as UnavailableError; the transaction is rolled back first.
    """
    with storage_faults():
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise


HEARTBEAT_UPDATE = (
    "UPDATE instances SET "
    "root = substr(:roots, json_extract(beat.value, '$[1]') + 1, "
    "json_extract(beat.value, '$[2]')), "
    "last_report = json_extract(beat.value, '$[3]'), "
    "seq = json_extract(beat.value, '$[4]'), "
    "boot_id = json_extract(beat.value, '$[5]'), "
    "scanned_at_ms = json_extract(beat.value, '$[6]'), "
    "rss_bytes = json_extract(beat.value, '$[7]'), "
    "cpu_millis = json_extract(beat.value, '$[8]'), "
    "version = json_extract(beat.value, '$[9]') "
    "FROM json_each(:beats) AS beat "
    "WHERE instances.id = json_extract(beat.value, '$[0]')"
)
"""The heartbeat columns of many rows in one statement (one sqlite3 step)."""


def heartbeat_params(instances: Iterable[Instance]) -> dict[str, object]:
    """:data:`HEARTBEAT_UPDATE`'s parameters: the rows as JSON, their roots as one blob."""
    beats: list[tuple[object, ...]] = []
    roots = bytearray()
    for instance in instances:
        beats.append(
            (
                instance.id,
                len(roots),
                len(instance.root),
                instance.last_report,
                instance.seq,
                instance.boot_id,
                instance.scanned_at_ms,
                instance.footprint.rss_bytes,
                instance.footprint.cpu_millis,
                instance.version,
            )
        )
        roots += instance.root
    return {"beats": json.dumps(beats), "roots": bytes(roots)}


def _heartbeat_change(before: Instance | None, after: Instance) -> bool:
    """Whether saving ``after`` behind changes more than the heartbeat columns.

    True when an image field changed (the row is then upserted whole at the next
    flush). Raises ControllerError for what must be durable: a new instance, or a
    change of state, taint or any other field an audit event describes.
    """
    if before is None or (
        before.state is not after.state
        or (before.taint is not after.taint and before.taint != after.taint)
        or before.suspicious != after.suspicious
        or before.group != after.group
        or before.first_seen != after.first_seen
        or before.replaces != after.replaces
    ):
        raise ControllerError(
            f"instance {after.id}: a new instance or a change of state, taint or record "
            "must be saved durably, not behind",
            reason="not_durable",
        )
    return before.image_ref != after.image_ref or before.image_digest != after.image_digest


def migrate(db: sqlite3.Connection) -> int:
    """Apply every migration step not applied yet; returns the schema version."""
    db.execute(CREATE_MIGRATIONS_TABLE)
    applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, statements in MIGRATIONS:
        if version in applied:
            continue
        with _transaction(db):
            for statement in statements:
                db.execute(statement)
            db.execute(RECORD_MIGRATION, (version, time.time()))
    return max(version for version, _ in MIGRATIONS)


def _select_images() -> str:
    return f"SELECT {IMAGE_COLUMNS} FROM images ORDER BY registered_at, ref"


def _select_groups() -> str:
    return f"SELECT {GROUP_COLUMNS} FROM groups"
