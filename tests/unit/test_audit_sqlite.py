"""Tampering with the SQLite audit tables is detected by verify, which names the record.

Each test edits the database the way someone with write access could: drop the
guard triggers, then update, delete or swap rows.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from controller.audit import events as ev
from controller.audit.errors import AuditError
from controller.audit.record import make_record
from controller.audit.row import record_from_row
from controller.audit.sqlite import SqliteAuditLog, append_in, install_schema

IMAGE = "web@sha256:" + "a" * 64
COUNT = 8
COLUMNS = [
    "at_ms",
    "kind",
    "actor",
    "reason",
    "instance_id",
    "related_instance_id",
    "group_name",
    "image",
    "data",
    "prev_hash",
    "hash",
]


def fill(log: SqliteAuditLog, count: int = COUNT) -> None:
    for n in range(count):
        log.append(
            ev.instance_transition(
                f"i-{n % 3}",
                at_ms=1000 + n,
                actor="controller",
                group="web",
                image=IMAGE,
                from_state=None,
                to_state="conformant",
                reason=f"step {n}",
                replaces="i-0" if n % 2 else None,
            )
        )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "corral.db"
    log = SqliteAuditLog.open(path)
    fill(log)
    log.close()
    return path


def tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_records_no_update")
    conn.execute("DROP TRIGGER audit_records_prune_only")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()


def verify(path: Path) -> tuple[bool, int | None, str]:
    log = SqliteAuditLog.open(path, read_only=True)
    result = log.verify()
    log.close()
    return result.ok, result.first_bad_seq, result.problem


def edited(column: str, value: object) -> object:
    if column == "at_ms":
        return int(value) + 1  # type: ignore[call-overload]
    if column == "kind":
        return "group.breaker_resume"
    if column == "data":
        return str(value).replace("conformant", "tainted")
    if column in ("prev_hash", "hash"):
        text = str(value)
        return ("0" if text[0] != "0" else "1") + text[1:]
    return ("x" + str(value)) if value is not None else "i-forged"


def test_an_untouched_log_verifies(db: Path) -> None:
    assert verify(db) == (True, None, "")


@pytest.mark.parametrize("seq", range(1, COUNT + 1))
@pytest.mark.parametrize("column", COLUMNS)
def test_editing_any_column_of_any_record_is_named(db: Path, seq: int, column: str) -> None:
    conn = sqlite3.connect(db)
    (value,) = conn.execute(f"SELECT {column} FROM audit_records WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    tamper(
        db, (f"UPDATE audit_records SET {column} = ? WHERE seq = ?", (edited(column, value), seq))
    )
    ok, bad, problem = verify(db)
    assert not ok
    assert bad == seq, problem


@pytest.mark.parametrize("seq", range(1, COUNT + 1))
def test_deleting_any_record_is_named(db: Path, seq: int) -> None:
    tamper(db, ("DELETE FROM audit_records WHERE seq = ?", (seq,)))
    ok, bad, problem = verify(db)
    assert not ok and bad == seq, problem


def test_deleting_the_tail_and_rewinding_nothing_else_is_caught_by_the_head(db: Path) -> None:
    tamper(db, ("DELETE FROM audit_records WHERE seq > ?", (COUNT - 3,)))
    ok, bad, problem = verify(db)
    assert not ok and bad == COUNT - 2
    assert "missing" in problem


@pytest.mark.parametrize(("a", "b"), [(1, 2), (3, 7), (COUNT - 1, COUNT)])
def test_reordering_records_is_named(db: Path, a: int, b: int) -> None:
    cols = ", ".join(COLUMNS)
    swap = (
        f"UPDATE audit_records SET ({cols}) ="
        f" (SELECT {cols} FROM audit_records WHERE seq = ?) WHERE seq = ?"
    )
    tamper(
        db,
        (f"CREATE TEMP TABLE keep AS SELECT * FROM audit_records WHERE seq = {a}", ()),
        (swap, (b, a)),
        (f"UPDATE audit_records SET ({cols}) = (SELECT {cols} FROM keep) WHERE seq = ?", (b,)),
    )
    ok, bad, problem = verify(db)
    assert not ok and bad == a, problem


def test_a_consistently_rehashed_edit_is_caught_at_the_next_record(db: Path) -> None:
    """Recomputing the edited record's own hash only moves the break to its successor."""
    conn = sqlite3.connect(db)
    row = conn.execute(
        f"SELECT seq, {', '.join(COLUMNS)} FROM audit_records WHERE seq = 4"
    ).fetchone()
    conn.close()
    record = record_from_row(row)
    forged = make_record(4, record.prev_hash, replace(record.event, actor="operator:mallory"))
    tamper(
        db,
        (
            "UPDATE audit_records SET actor = ?, hash = ? WHERE seq = 4",
            (forged.event.actor, forged.hash),
        ),
    )
    ok, bad, _ = verify(db)
    assert not ok and bad == 5


def test_append_in_joins_the_callers_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    install_schema(conn)
    conn.execute("CREATE TABLE instances (id TEXT PRIMARY KEY, state TEXT)")
    event = ev.instance_transition(
        "i-1",
        at_ms=1,
        actor="controller",
        group="web",
        image=IMAGE,
        from_state=None,
        to_state="pending",
    )
    with pytest.raises(AuditError):
        append_in(conn, event)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO instances VALUES ('i-1', 'pending')")
    append_in(conn, event)
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT COUNT(*) FROM audit_records").fetchone() == (0,)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO instances VALUES ('i-1', 'pending')")
    record = append_in(conn, event)
    conn.execute("COMMIT")
    log = SqliteAuditLog(conn)
    assert record.seq == 1 and log.verify().ok and log.head().hash == record.hash


def test_two_connections_appending_at_once_never_fork(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    SqliteAuditLog.open(path).close()
    logs = [SqliteAuditLog.open(path) for _ in range(3)]

    def worker(log: SqliteAuditLog, w: int) -> None:
        for n in range(30):
            log.append(
                ev.instance_transition(
                    f"i-{w}",
                    at_ms=n,
                    actor="controller",
                    group="web",
                    image=IMAGE,
                    from_state=None,
                    to_state="pending",
                )
            )

    threads = [threading.Thread(target=worker, args=(log, w)) for w, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = logs[0].verify()
    assert result.ok and result.last_seq == 90, result.describe()


def test_triggers_refuse_updates_and_early_deletes(db: Path) -> None:
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_records SET actor = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="behind a checkpoint"):
        conn.execute("DELETE FROM audit_records WHERE seq = 1")


def test_a_pruned_log_must_start_at_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    log = SqliteAuditLog.open(path)
    fill(log)
    checkpoint = log.checkpoint(at_ms=5000, actor="controller")
    fill(log, 3)
    assert log.prune_before(checkpoint) == COUNT
    assert log.verify().ok
    log.close()
    tamper(path, ("DELETE FROM audit_records WHERE seq = ?", (checkpoint.seq,)))
    ok, bad, _ = verify(path)
    assert not ok and bad == checkpoint.seq


def test_read_only_open_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(AuditError):
        SqliteAuditLog.open(tmp_path / "absent.db", read_only=True)
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(AuditError):
        SqliteAuditLog.open(tmp_path / "other.db", read_only=True)


def test_a_deleted_head_row_fails_verification(db: Path) -> None:
    tamper(db, ("DELETE FROM audit_head", ()))
    ok, _, problem = verify(db)
    assert not ok and "audit_head" in problem
