"""``corral audit`` against a controller data dir: answers, exports, verification exit codes."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from controller.audit import events as ev
from controller.audit.sqlite import SqliteAuditLog
from controller.cli.main import main

IMAGE = "web@sha256:" + "a" * 64
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    log = SqliteAuditLog.open(tmp_path / "corral.db")
    log.append(
        ev.image_registered(
            IMAGE, at_ms=T0, actor="operator:alice", digest="d", manifest_digest="m"
        )
    )
    log.append(
        ev.group_created("web", at_ms=T0, actor="operator:alice", image=IMAGE, mode="enforce")
    )
    for name in ("i-1", "i-2"):
        log.append(
            ev.instance_transition(
                name,
                at_ms=T0 + 1000,
                actor="controller",
                group="web",
                image=IMAGE,
                from_state=None,
                to_state="conformant",
            )
        )
    log.append(
        ev.instance_transition(
            "i-2",
            at_ms=T0 + 60_000,
            actor="operator:bob",
            group="web",
            image=IMAGE,
            from_state="conformant",
            to_state="tainted",
            reason="manual",
        )
    )
    log.close()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_conformance_now_and_in_the_past(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "conformance", "--data-dir", str(data_dir), "--json")
    assert code == 0
    now = json.loads(out)
    assert (now["total"], now["conformant"], now["ratio"]) == (2, 1, 0.5)
    code, out, _ = run(
        capsys, "conformance", "--data-dir", str(data_dir), "--at", "2026-01-01T00:00:30Z", "--json"
    )
    then = json.loads(out)
    assert then["ratio"] == 1.0 and then["at_ms"] == T0 + 30_000
    code, out, err = run(
        capsys,
        "conformance",
        "--data-dir",
        str(data_dir),
        "--at",
        str(T0 + 30_000),
        "--csv",
        "--group",
        "web",
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["instance_id"], r["state"]) for r in rows] == [
        ("i-1", "conformant"),
        ("i-2", "conformant"),
    ]
    assert "2/2 conformant" in err


def test_history_and_images(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "history", "i-2", "--data-dir", str(data_dir), "--json")
    history = json.loads(out)
    assert code == 0 and [r["data"]["to"] for r in history["records"]] == ["conformant", "tainted"]
    code, out, _ = run(capsys, "history", "i-2", "--data-dir", str(data_dir))
    assert "operator:bob" in out and "manual" in out
    assert run(capsys, "history", "i-404", "--data-dir", str(data_dir))[0] == 2
    code, out, _ = run(capsys, "images", "--data-dir", str(data_dir), "--json")
    (image,) = json.loads(out)["images"]
    assert image["registered_by"] == "operator:alice" and len(image["runs"]) == 2


def test_export_then_verify_offline(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "export.jsonl"
    code, out, _ = run(
        capsys,
        "export",
        "--data-dir",
        str(data_dir),
        "--since",
        "2026-01-01T00:00:00Z",
        "--until",
        "now",
        "--out",
        str(out_file),
    )
    assert code == 0 and "exported 5 records" in out
    assert run(capsys, "verify", "--file", str(out_file))[0] == 0
    data = bytearray(out_file.read_bytes())
    data[200] ^= 0x01
    out_file.write_bytes(bytes(data))
    code, _, err = run(capsys, "verify", "--file", str(out_file))
    assert code == 1 and "BROKEN" in err


def test_an_export_of_an_edited_log_is_written_and_says_broken(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = sqlite3.connect(data_dir / "corral.db")
    conn.execute("DROP TRIGGER audit_records_no_update")
    conn.execute("UPDATE audit_records SET reason = 'rewritten' WHERE seq = 4")
    conn.commit()
    conn.close()
    out_file = tmp_path / "export.jsonl"
    argv = ("--data-dir", str(data_dir), "--since", "0", "--until", "now", "--out", str(out_file))
    code, out, err = run(capsys, "export", *argv)
    assert code == 1 and "exported 5 records" in out
    assert "BROKEN at record 4" in err and "not to its stored hash" in err
    code, _, err = run(capsys, "verify", "--file", str(out_file))  # the file says the same
    assert code == 1 and "BROKEN at record 4" in err


def test_verify_names_the_edited_record(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "verify", "--data-dir", str(data_dir))[0] == 0
    conn = sqlite3.connect(data_dir / "corral.db")
    conn.execute("DROP TRIGGER audit_records_no_update")
    conn.execute("UPDATE audit_records SET actor = 'operator:nobody' WHERE seq = 5")
    conn.commit()
    conn.close()
    code, _, err = run(capsys, "verify", "--data-dir", str(data_dir))
    assert code == 1 and "record 5" in err
    code, out, _ = run(capsys, "verify", "--data-dir", str(data_dir), "--json")
    assert code == 1 and json.loads(out)["first_bad_seq"] == 5


def test_checkpoint_signs_prune_keeps_verify(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "audit.key"
    key.write_text("a-long-enough-secret-for-hmac\n")
    code, out, _ = run(capsys, "checkpoint", "--data-dir", str(data_dir), "--key-file", str(key))
    assert code == 0 and "corral-audit-checkpoint seq=6 sha256=" in out
    assert "a-long-enough-secret" not in out
    assert run(capsys, "prune", "--data-dir", str(data_dir), "--before-seq", "6")[0] == 0
    assert run(capsys, "verify", "--data-dir", str(data_dir), "--key-file", str(key))[0] == 0
    assert run(capsys, "prune", "--data-dir", str(data_dir), "--before-seq", "3")[0] == 2


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "verify", "--data-dir", str(tmp_path / "absent"))[0] == 2
    assert run(capsys, "checkpoint")[0] == 2  # writes need the store file
    both = ("--data-dir", str(tmp_path), "--controller", "127.0.0.1:1")
    assert run(capsys, "verify", *both)[0] == 2
    assert run(capsys, "conformance", "--data-dir", str(tmp_path), "--at", "yesterday-ish")[0] == 2
