"""An export verifies offline, and any one-byte edit to it makes verification fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.audit import events as ev
from controller.audit.export import export_jsonl, verify_export, verify_export_bytes
from controller.audit.memory import MemoryAuditLog

IMAGE = "web@sha256:" + "a" * 64
KEY = b"offline-auditor-key-0123456789"


@pytest.fixture
def export(tmp_path: Path) -> Path:
    log = MemoryAuditLog()
    for n in range(6):
        log.append(
            ev.instance_transition(
                f"i-{n}",
                at_ms=100 + n,
                actor="controller",
                group="web",
                image=IMAGE,
                from_state=None,
                to_state="pending",
                reason="launched ✓",
            )
        )
        if n == 2:
            log.checkpoint(at_ms=103, actor="operator:alice", key=KEY)
    path = tmp_path / "audit.jsonl"
    summary = export_jsonl(log, path, since_ms=101, until_ms=104)
    assert summary.count == 5 and summary.first_seq == 2
    return path


def test_an_export_verifies_offline(export: Path) -> None:
    result = verify_export(export, key=KEY)
    assert result.ok, result.describe()
    assert (result.first_seq, result.last_seq, result.checked) == (2, 6, 5)


def test_every_one_byte_edit_is_detected(export: Path) -> None:
    original = export.read_bytes()
    for position in range(len(original)):
        data = bytearray(original)
        data[position] = ord("0") if data[position] != ord("0") else ord("1")
        assert not verify_export_bytes(bytes(data)).ok, f"edit at byte {position} went unnoticed"
    assert position > 2_000  # the whole file was covered


def test_a_dropped_line_or_truncation_is_detected(export: Path, tmp_path: Path) -> None:
    lines = export.read_bytes().split(b"\n")
    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(b"\n".join(lines[:3] + lines[4:]))
    result = verify_export(edited)
    assert not result.ok and result.first_bad_seq == 4
    edited.write_bytes(export.read_bytes()[:-1])
    assert not verify_export(edited).ok


def test_a_wrong_key_fails_the_signed_checkpoint(export: Path) -> None:
    result = verify_export(export, key=b"not-the-auditors-key-at-all")
    assert not result.ok and result.first_bad_seq == 4
