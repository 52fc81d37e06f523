"""Offline audit commands refuse an emptied or damaged store instead of verifying nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.audit import events as ev
from controller.audit.sqlite import SqliteAuditLog
from controller.cli import audit_report
from controller.cli.main import main
from controller.store.sqlite import SqliteStore

REPORT = ("report", "--from", "0", "--to", "1000")


@pytest.mark.parametrize("command", [("verify",), REPORT], ids=["verify", "report"])
@pytest.mark.parametrize("damage", ["empty", "missing_wal_after_crash", "garbage"])
def test_verify_and_report_refuse_a_store_that_proves_nothing(
    tmp_path: Path, damage: str, command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data)
    db = store.path
    if damage == "missing_wal_after_crash":
        # As after SIGKILL: the marker says "open", then the log is lost.
        store._data_dir.release()  # the test stands in for the dead process
        (data / "corral.db-wal").unlink(missing_ok=True)
    else:
        store.close()
        db.write_bytes(b"" if damage == "empty" else b"not a database, just bytes" * 100)
    page = tmp_path / "report.html"
    extra = ("--out", str(page)) if command == REPORT else ()
    assert main(["audit", *command, "--data-dir", str(data), *extra]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "corral.db" in err
    assert "ok" not in out and not page.exists()


@pytest.mark.parametrize("worker", [False, True], ids=["here", "in-a-worker"])
def test_a_report_refuses_a_store_only_its_integrity_check_finds_damaged(
    tmp_path: Path,
    worker: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole-file check runs beside the fold; what it finds still stops the report."""
    data = tmp_path / "data"
    store = SqliteStore(data)
    db = store.path
    store.close()
    log = SqliteAuditLog.open(db)
    for n in range(200):
        log.append(ev.breaker_resume(f"g{n}", at_ms=n, actor="operator:a", reason="r" * 500))
    log.close()
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        (index_root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'audit_records_kind'"
        ).fetchone()
    assert index_root < pages
    with db.open("r+b") as raw:  # the header of an index page the rowid scan never reads
        raw.seek((index_root - 1) * size)
        raw.write(b"\xff" * 8)
    monkeypatch.setattr(audit_report, "BACKGROUND_BYTES", 0 if worker else 1 << 40)
    page = tmp_path / "report.html"
    assert main(["audit", *REPORT, "--data-dir", str(data), "--out", str(page)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and "corral.db" in err
    assert not page.exists()
