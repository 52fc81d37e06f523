"""A backup of the SQLite store that cannot miss the write-ahead log.

Copying ``corral.db`` with ``cp`` while a controller runs misses every change
still in ``corral.db-wal`` (and may copy a torn page). SQLite's online backup
API reads the database as one consistent snapshot, log included, page by page,
while the controller keeps writing. The copy is written beside its destination
under a temporary name, checked (``PRAGMA quick_check``, schema and audit head
present), fsynced and only then renamed into place, so a backup that exists is
a whole, sound store. Restoring is copying it to ``corral.db`` in an empty data
dir (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from controller.errors import StoreRefusedError, UnavailableError
from controller.store.sqlite_open import DB_NAME, check_file, diagnose


@dataclass(frozen=True)
class Backup:
    """What a backup holds."""

    path: Path
    bytes: int
    instances: int
    audit_seq: int
    audit_head: str


def backup(data_dir: Path, out: Path) -> Backup:
    """Copy the store in ``data_dir`` to ``out`` (a running controller may keep writing).

    Raises StoreRefusedError when there is no sound store to copy, and
    UnavailableError when the copy cannot be written.
    """
    problem = diagnose(data_dir)
    source_path = data_dir / DB_NAME
    if problem is not None or not source_path.exists():
        raise StoreRefusedError(problem or f"{source_path} does not exist: nothing to back up")
    tmp = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
        try:
            tmp.unlink(missing_ok=True)
            target = sqlite3.connect(tmp)
            try:
                source.backup(target, pages=4096)
                target.execute("PRAGMA journal_mode = DELETE")
            finally:
                target.close()
        finally:
            source.close()
        damage = check_file(tmp, "the backup is not usable")
        if damage is not None:
            raise UnavailableError(damage, reason="backup_damaged")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    except (OSError, sqlite3.Error) as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UnavailableError(f"cannot write the backup {out}: {error}") from None
    return _describe(out)


def _describe(path: Path) -> Backup:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        instances = int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        seq, head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    finally:
        conn.close()
    return Backup(path, path.stat().st_size, instances, int(seq), str(head))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
