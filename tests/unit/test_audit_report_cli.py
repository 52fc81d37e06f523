"""``corral audit report`` offline: from a data dir or an export, its proof, its exit codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.audit import events as ev
from controller.audit.chain import key_id
from controller.audit.sqlite import SqliteAuditLog
from controller.cli import audit_report
from controller.cli.main import main

IMAGE = "web@sha256:" + "a" * 64
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = b"report-test-key-0123456789"
PERIOD = ("--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:10:00Z")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Two instances from T0; i-2 tainted by hand at +60 s; a signed checkpoint at +120 s."""
    log = SqliteAuditLog.open(tmp_path / "corral.db")
    log.append(
        ev.image_registered(IMAGE, at_ms=T0, actor="operator:a", digest="d", manifest_digest="m")
    )
    log.append(ev.group_created("web", at_ms=T0, actor="operator:a", image=IMAGE, mode="enforce"))
    for name in ("i-1", "i-2"):
        log.append(
            ev.instance_transition(
                name,
                at_ms=T0,
                actor="controller",
                group="web",
                image=IMAGE,
                from_state=None,
                to_state="conformant",
            )
        )
    log.append(
        ev.taint(
            "i-2",
            at_ms=T0 + 60_000,
            actor="operator:bob",
            group="web",
            image=IMAGE,
            source="operator",
            drift_kind="manual",
            reason="rotate keys",
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
        )
    )
    log.checkpoint(at_ms=T0 + 120_000, actor="operator:a", key=KEY)
    log.close()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", "report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def facts(document: dict[str, Any]) -> dict[str, Any]:
    """The report without what depends on how it was made (the proof, the time)."""
    return {k: v for k, v in document.items() if k not in ("proof", "generated", "generated_ms")}


def test_from_the_data_dir_html_and_json(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "r.html"
    code, out, _ = run(capsys, "--data-dir", str(data_dir), *PERIOD, "--out", str(page))
    assert code == 0, out
    assert "3 instances" not in out and "2 instances" in out and "audit chain intact" in out
    assert f"re-verify offline: corral audit verify --data-dir {data_dir}" in out
    assert "rotate keys" in page.read_text(encoding="utf-8")
    code, out, _ = run(
        capsys, "--data-dir", str(data_dir), *PERIOD, "--out", "-", "--format", "json"
    )
    document = json.loads(out)
    summary = document["summary"]
    # 10 min: i-1 conformant throughout, i-2 for the first minute.
    assert summary["conformant_ms"] == 600_000 + 60_000
    assert summary["existing_ms"] == 1_200_000
    assert summary["manual_taints"][0]["actor"] == "operator:bob"
    assert document["proof"]["ok"] and document["proof"]["signing_key_ids"] == [key_id(KEY)]
    assert document["proof"]["signatures_checked_with"] is None


def test_from_an_export_gives_the_same_facts_and_its_own_proof(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "audit.jsonl"
    code, out, err = run(
        capsys,
        "--data-dir",
        str(data_dir),
        *PERIOD,
        "--out",
        "-",
        "--format",
        "json",
        "--export",
        str(export),
    )
    assert code == 0, err
    direct = json.loads(out)
    code, out, err = run(capsys, "--file", str(export), *PERIOD, "--out", "-", "--format", "json")
    assert code == 0, err
    offline = json.loads(out)
    assert facts(offline) == facts(direct)
    assert offline["proof"]["verify_command"] == f"corral audit verify --file {export}"
    assert (
        offline["proof"]["export_sha256"]
        == json.loads(export.read_text().splitlines()[-1])["file_sha256"]
    )
    assert [c["what"] for c in direct["proof"]["checks"]] == [
        f"the audit log in {data_dir}",
        f"the export file {export}",
    ]
    assert main(["audit", "verify", "--file", str(export)]) == 0


def test_signatures_are_checked_with_the_key(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key"
    key.write_bytes(KEY)
    code, out, _ = run(
        capsys,
        "--data-dir",
        str(data_dir),
        *PERIOD,
        "--out",
        "-",
        "--format",
        "json",
        "--key-file",
        str(key),
    )
    assert code == 0 and json.loads(out)["proof"]["signatures_checked_with"] == key_id(KEY)
    key.write_bytes(b"another-key-0123456789")
    code, out, err = run(
        capsys,
        "--data-dir",
        str(data_dir),
        *PERIOD,
        "--out",
        "-",
        "--format",
        "json",
        "--key-file",
        str(key),
    )
    assert code == 1 and "signed with another key" in err
    assert json.loads(out)["proof"]["ok"] is False


def test_an_edited_log_still_gives_a_page_that_says_broken(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(data_dir / "corral.db") as db:
        db.execute("DROP TRIGGER audit_records_no_update")
        db.execute("UPDATE audit_records SET reason = 'nothing to see' WHERE seq = 5")
    page = tmp_path / "r.html"
    code, _, err = run(capsys, "--data-dir", str(data_dir), *PERIOD, "--out", str(page))
    assert code == 1 and "BROKEN at record 5" in err
    text = page.read_text(encoding="utf-8")
    assert "BROKEN" in text and "INTACT" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--from", "2026-01-02", "--to", "2026-01-01"), "--to must be after --from"),
        (("--from", "yesterday"), "not a time"),
        (("--from", "0", "--file", "x.jsonl", "--data-dir", "."), "give one source"),
        (("--from", "0", "--file", "x.jsonl", "--export", "y.jsonl"), "--file already is one"),
        (("--from", "0", "--data-dir", "/nonexistent"), "no controller store"),
        (("--from", "0", "--file", "/nonexistent.jsonl"), "cannot read"),
    ],
)
def test_usage_errors_exit_2(
    argv: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "r.html"))
    assert code == 2 and message in err
    assert not (tmp_path / "r.html").exists()


def test_a_large_log_is_verified_in_a_worker_process_with_the_same_answer(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_report, "BACKGROUND_BYTES", 0)
    export = tmp_path / "audit.jsonl"
    argv = ("--data-dir", str(data_dir), *PERIOD, "--out", "-", "--format", "json")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert json.loads(out)["proof"]["checks"][0]["checked"] == 7
    code, out, err = run(capsys, *argv, "--export", str(export))
    assert code == 0, err
    with sqlite3.connect(data_dir / "corral.db") as db:
        db.execute("DROP TRIGGER audit_records_no_update")
        db.execute("UPDATE audit_records SET actor = 'nobody' WHERE seq = 3")
    code, out, err = run(capsys, *argv)
    assert code == 1 and json.loads(out)["proof"]["checks"][0]["first_bad_seq"] == 3
    export.write_bytes(export.read_bytes().replace(b"rotate keys", b"rotate kays"))
    code, out, err = run(capsys, "--file", str(export), *PERIOD, "--out", "-", "--format", "json")
    assert code == 1 and "BROKEN" in err
