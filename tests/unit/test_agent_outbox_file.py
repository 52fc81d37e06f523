"""The outbox file: an exact round trip, and damage of any kind detected, never a traceback."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from agent.daemon.outbox_file import FILE_NAME, DamagedOutboxError, OutboxFile, decode, encode
from agent.daemon.report import PendingReport
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryError, EntryType
from agent.manifest.report import Evidence, Footprint, Report


def header(seq: int) -> Report:
    return Report(
        instance_id="i-0123456789abcdef0",
        group="web",
        image_ref="demo@sha256:" + "a" * 64,
        image_digest="sha256:" + "a" * 64,
        root=bytes(range(32)),
        seq=seq,
        boot_id="8a7c0f64-3d2e-4a53-9e0b-1f2a3b4c5d6e",
        scanned_at_ms=1_800_000_000_000 + seq,
        footprint=Footprint(rss_bytes=40 << 20, cpu_millis=1234),
        agent_version="0.1.0",
    )


EVIDENCE = Evidence(
    changes=(
        Change(
            ChangeKind.MODIFIED,
            b"/etc/motd",
            Entry(b"/etc/motd", EntryType.REGULAR, 0o644, 0, 0, 6, b"\x01" * 32),
            ("content", "size"),
        ),
        Change(ChangeKind.REMOVED, b"/etc/hostname", None),
        Change(
            ChangeKind.ADDED,
            b"/bin/\xff\xfe-not-utf8",
            Entry(
                b"/bin/\xff\xfe-not-utf8",
                EntryType.SYMLINK,
                0o777,
                1,
                2,
                link_target=b"/tmp/x",
                error=EntryError.NONE,
            ),
        ),
        Change(
            ChangeKind.ADDED,
            b"/dev/null2",
            Entry(b"/dev/null2", EntryType.CHAR_DEVICE, 0o666, 0, 0, rdev_major=1, rdev_minor=3),
        ),
    ),
    truncated=True,
    total_changes=17,
)
REPORTS = [PendingReport(header(1)), PendingReport(header(2), EVIDENCE), PendingReport(header(3))]


def test_reports_round_trip_exactly() -> None:
    assert decode(encode(REPORTS)) == REPORTS
    assert decode(encode([])) == []


def test_every_truncation_is_detected() -> None:
    data = encode(REPORTS)
    for length in range(len(data)):
        with pytest.raises(DamagedOutboxError):
            decode(data[:length])


@pytest.mark.parametrize("offset", [0, 25, 60, 200, -40, -2])
def test_a_flipped_byte_is_detected(offset: int) -> None:
    data = bytearray(encode(REPORTS))
    data[offset] ^= 0x20
    with pytest.raises(DamagedOutboxError):
        decode(bytes(data))


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"reports": {}}',
        b'{"reports": [1]}',
        b'{"reports": [{"seq": 1}]}',
        b'{"reports": [{"instance_id": 1}]}',
    ],
)
def test_a_well_checksummed_but_malformed_body_is_damaged(body: bytes) -> None:
    data = f"corral-agent-outbox 1 {hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    with pytest.raises(DamagedOutboxError):
        decode(data + body)


def test_an_unknown_enum_or_field_type_in_evidence_is_damaged() -> None:
    document = json.loads(encode(REPORTS).partition(b"\n")[2])
    document["reports"][1]["evidence"]["changes"][0]["kind"] = "teleported"
    body = json.dumps(document).encode()
    data = f"corral-agent-outbox 1 {hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    with pytest.raises(DamagedOutboxError, match="teleported"):
        decode(data + body)


def test_a_temporary_left_by_a_killed_write_is_removed_at_load(tmp_path: Path) -> None:
    (tmp_path / ".outbox.k1ll3d").write_bytes(b"half a fi")
    box = OutboxFile(str(tmp_path))
    box.save(REPORTS)
    assert box.load() == REPORTS
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]


def test_save_then_load_and_remove(tmp_path: Path) -> None:
    box = OutboxFile(str(tmp_path))
    box.save(REPORTS)
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary left behind
    assert OutboxFile(str(tmp_path)).load() == REPORTS
    box.remove()
    box.remove()  # already gone: fine
    assert list(tmp_path.iterdir()) == [] and box.load() == []


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"corral-agent-outbox 2 x 0\n"])
def test_a_damaged_file_is_renamed_aside_with_one_line(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    counted: list[int] = []
    box = OutboxFile(str(tmp_path), on_damaged=lambda: counted.append(1), clock=lambda: 1234.5)
    with caplog.at_level(logging.INFO):
        assert box.load() == []
    assert (tmp_path / f"{FILE_NAME}.damaged-1234500").read_bytes() == content
    assert not (tmp_path / FILE_NAME).exists()
    assert counted == [1]
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert "damaged" in record.getMessage()


def test_an_unreadable_file_is_one_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).mkdir()  # reading it fails with EISDIR
    with caplog.at_level(logging.INFO):
        assert OutboxFile(str(tmp_path)).load() == []
    [record] = caplog.records
    assert "cannot read outbox file" in record.getMessage() and record.exc_info is None
