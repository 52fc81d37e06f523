"""Offline audit commands refuse an emptied or damaged store instead of verifying nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli.main import main
from controller.store.sqlite import SqliteStore


@pytest.mark.parametrize("damage", ["empty", "missing_wal_after_crash", "garbage"])
def test_verify_refuses_a_store_that_proves_nothing(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
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
    assert main(["audit", "verify", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corral.db" in err
    assert "ok" not in capsys.readouterr().out
