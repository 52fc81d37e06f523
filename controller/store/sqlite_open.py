"""The SQLite store is checked before it is trusted: one owner, a whole file, a sound one.

A controller that starts on a missing, emptied or damaged database must not serve
an empty fleet: that would forget every taint and tell auditors nothing ever
happened. So opening a data dir:

1. takes an exclusive lock (``corral.lock``): one controller per data dir, since
   the store serves its rows from memory;
2. refuses when ``corral.db`` is missing or empty while the data dir shows that
   a store existed (the marker ``corral-store.json``, or a ``corral.db-wal``);
3. refuses when the marker says the last controller did not stop cleanly and
   the write-ahead log is gone (committed changes lived only there);
4. runs ``PRAGMA quick_check`` and checks the schema and the audit head are
   present, refusing a damaged or foreign file.

Each refusal is a :class:`~controller.errors.StoreRefusedError` with one line
that says what was found and what to do. ``init=True`` (``corral-controller
serve --init``) starts a fresh store after moving whatever was there aside into
``damaged-<UTC time>/`` (never deleting it); it refuses to replace a sound store.

The marker is written when a store is created (after its schema is
checkpointed into the main file), set ``clean: false`` while a controller has
it open and ``clean: true`` after a clean close has checkpointed the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from controller.errors import StoreRefusedError

DB_NAME = "corral.db"
MARKER_NAME = "corral-store.json"
LOCK_NAME = "corral.lock"
STORE_TABLES = ("schema_migrations", "images", "groups", "instances", "audit_head")
AUDIT_TABLES = ("audit_records", "audit_head")


@dataclass
class DataDir:
    """A data dir this process holds the lock of; :meth:`release` gives it up."""

    path: Path
    lock: IO[str]

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    def mark(self, *, clean: bool) -> None:
        """Record whether the store was closed cleanly (atomically, durably)."""
        write_marker(self.path, clean=clean)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def claim(data_dir: Path, *, init: bool = False) -> DataDir:
    """Lock ``data_dir`` and check its store; returns it ready to open.

    A data dir with no store at all gets a new one. Raises StoreRefusedError.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock(data_dir)
    except OSError as error:
        raise StoreRefusedError(f"cannot use data dir {data_dir}: {error.strerror}") from None
    held = DataDir(data_dir, lock)
    try:
        problem = diagnose(data_dir)
        if init:
            if problem is None and held.db_path.exists():
                raise StoreRefusedError(
                    f"{held.db_path} is a sound store; --init would set it aside: move the "
                    "data dir away yourself if you really mean to start an empty fleet"
                )
            _set_aside(data_dir)
        elif problem is not None:
            raise StoreRefusedError(problem)
    except BaseException:
        held.release()
        raise
    return held


def diagnose(
    data_dir: Path, *, tables: tuple[str, ...] = STORE_TABLES, integrity: bool = True
) -> str | None:
    """What is wrong with the store in ``data_dir``, in one line; None when it may be opened.

    ``tables`` are those that must exist (the audit commands need only the log's);
    ``integrity=False`` leaves out SQLite's integrity check, which reads the whole
    file (a caller that runs it elsewhere, later).
    """
    db = data_dir / DB_NAME
    wal = data_dir / f"{DB_NAME}-wal"
    marker = read_marker(data_dir)
    fix = "restore it from a backup (docs/operations.md) or start afresh with --init"
    if not db.exists():
        if marker is not None or wal.exists():
            return f"{db} is missing but {data_dir} held a store: {fix}"
        return None
    if db.stat().st_size == 0:
        return f"{db} is empty (0 bytes) but a store was expected: {fix}"
    if marker is not None and not marker.get("clean", False) and not wal.exists():
        return (
            f"{wal.name} is missing after an unclean stop: changes committed since the "
            f"last checkpoint are lost; {fix}"
        )
    return check_file(db, fix, tables=tables, integrity=integrity)


def check_file(
    db: Path, fix: str, *, tables: tuple[str, ...] = STORE_TABLES, integrity: bool = True
) -> str | None:
    """What is wrong with the database file ``db`` (one line ending in ``fix``); None if sound."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as error:
        return f"{db} cannot be opened ({error}): {fix}"
    try:
        result = conn.execute("PRAGMA quick_check").fetchall() if integrity else [("ok",)]
        if [tuple(row) for row in result] != [("ok",)]:
            first = str(result[0][0]).splitlines()[0] if result else "no answer"
            return f"{db} is damaged ({first}): {fix}"
        present = {
            str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        missing = [t for t in tables if t not in present]
        if missing:
            return f"{db} is not a complete corral store (no {', '.join(missing)} table): {fix}"
        if conn.execute("SELECT COUNT(*) FROM audit_head").fetchone()[0] != 1:
            return f"{db} has no audit head row (the audit log was cut): {fix}"
    except sqlite3.Error as error:
        return f"{db} is damaged ({str(error).splitlines()[0]}): {fix}"
    finally:
        conn.close()
    return None


def read_marker(data_dir: Path) -> dict[str, object] | None:
    path = data_dir / MARKER_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"clean": False}  # unreadable: the store existed, its state is unknown
    return data if isinstance(data, dict) else {"clean": False}


def write_marker(data_dir: Path, *, clean: bool) -> None:
    """Write the marker atomically: temp file, fsync, rename, fsync the directory."""
    previous = read_marker(data_dir) or {}
    body = {
        "store": "corral-sqlite",
        "created_at": previous.get("created_at", time.time()),
        "clean": clean,
    }
    tmp = data_dir / f".{MARKER_NAME}.tmp"
    with open(tmp, "w") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, data_dir / MARKER_NAME)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(data_dir: Path) -> IO[str]:
    handle = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the store's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise StoreRefusedError(
            f"data dir {data_dir} is in use by another controller ({owner}); "
            "one controller per SQLite store (replicas share PostgreSQL)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _set_aside(data_dir: Path) -> None:
    """Move an earlier store's files into ``damaged-<time>/`` (never delete them)."""
    names = [DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", MARKER_NAME]
    present = [name for name in names if (data_dir / name).exists()]
    if not present:
        return
    aside = data_dir / time.strftime("damaged-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir(exist_ok=True)
    for name in present:
        shutil.move(str(data_dir / name), str(aside / name))
