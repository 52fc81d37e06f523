"""The runner and its outbox file: what is kept, when it is written, what a restart sends.

A real data directory and the in-process scanner; the transport is the fake
from test_agent_runner.py (which codes are retryable is the transport's
business, tested in test_agent_transport_codes.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.daemon.outbox_file import FILE_NAME, decode
from agent.daemon.report import PendingReport
from tests.unit.test_agent_runner import Harness


def on_disk(harness: Harness) -> list[PendingReport] | None:
    path = harness.state / FILE_NAME
    return decode(path.read_bytes()) if path.exists() else None


def test_the_steady_state_never_touches_the_outbox_file(
    harness_durable: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = harness_durable
    assert harness.outbox_file is not None
    writes: list[str] = []
    monkeypatch.setattr(harness.outbox_file, "save", lambda _r: writes.append("save"))
    monkeypatch.setattr(harness.outbox_file, "remove", lambda: writes.append("remove"))
    for _ in range(5):
        harness.runner.tick()
        harness.clock.advance(30)
    assert len(harness.transport.sent) == 5
    assert writes == [] and on_disk(harness) is None


def test_drift_is_on_disk_before_its_first_delivery_attempt(harness_durable: Harness) -> None:
    harness = harness_durable
    seen: list[list[PendingReport] | None] = []
    harness.transport.on_deliver.append(lambda _report: seen.append(on_disk(harness)))
    (harness.root / "etc" / "motd").write_text("owned\n")
    harness.runner.tick()
    [persisted] = seen
    assert persisted is not None and [r.is_drift for r in persisted] == [True]
    assert persisted[0] == harness.transport.sent[0]  # byte for byte the same report
    assert on_disk(harness) is None  # acknowledged: the file is gone


@pytest.mark.parametrize("code", ["UNAVAILABLE", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED"])
def test_a_retryable_failure_keeps_the_report_on_disk_until_it_is_delivered(
    harness_durable: Harness, code: str
) -> None:
    harness = harness_durable
    harness.transport.down = True
    harness.transport.failing_code = code
    harness.runner.tick()
    persisted = on_disk(harness)
    assert persisted is not None and len(persisted) == 1
    assert harness.metric("corral_agent_report_failures_total", code=code) == 1
    harness.clock.advance(30)
    harness.runner.tick()
    assert len(on_disk(harness) or []) == 2  # a report queued while the file is kept joins it
    harness.transport.down = False
    harness.clock.advance(60)
    harness.runner.flush()
    assert [r.header.seq for r in harness.transport.sent] == [r.header.seq for r in persisted] + [
        harness.transport.sent[1].header.seq
    ]
    assert on_disk(harness) is None


def test_a_later_steady_report_does_not_overtake_an_unacknowledged_drift(
    harness_durable: Harness,
) -> None:
    harness = harness_durable
    harness.transport.down = True
    motd = harness.root / "etc" / "motd"
    original = motd.read_text()
    motd.write_text("owned\n")
    harness.runner.tick()
    motd.write_text(original)  # reverted: the next scans are conformant
    for _ in range(12):  # more than the outbox holds
        harness.clock.advance(30)
        harness.runner.tick()
    kept = on_disk(harness)
    assert kept is not None and kept[0].is_drift and len(kept) == 8
    harness.transport.down = False
    harness.clock.advance(60)
    harness.runner.flush()
    assert harness.transport.sent[0].is_drift
    assert [r.is_drift for r in harness.transport.sent[1:]] == [False] * 7


def test_a_drift_kept_by_one_run_is_delivered_first_by_the_next(tmp_path: Path) -> None:
    first = Harness(tmp_path, durable=True)
    first.transport.down = True
    motd = first.root / "etc" / "motd"
    original = motd.read_text()
    motd.write_text("owned\n")
    first.runner.tick()
    drift_seq = first.runner.outbox.items()[0].header.seq
    motd.write_text(original)  # reverted while the agent is down
    # SIGKILL: nothing more happens to the first runner; its file is all that is left.
    second = Harness(tmp_path, durable=True)
    assert [r.header.seq for r in second.runner.outbox.items()] == [drift_seq]
    assert second.metric("corral_agent_buffered_reports") == 1
    second.runner.tick()
    drift, steady = second.transport.sent
    assert drift.header.seq == drift_seq and drift.evidence is not None
    assert [c.path for c in drift.evidence.changes] == [b"/etc/motd"]
    assert steady.evidence is None and steady.header.seq > drift_seq
    assert on_disk(second) is None


def test_stop_then_persist_keeps_a_queued_steady_report(harness_durable: Harness) -> None:
    harness = harness_durable
    harness.runner.scan_once()  # queued, not yet delivered: memory only
    assert on_disk(harness) is None
    harness.runner.stop()
    assert harness.transport.closed  # a call in flight is cancelled, not waited for
    assert harness.runner.flush() is None and harness.transport.sent == []
    harness.runner.persist()
    assert [r.header.seq for r in on_disk(harness) or []] == [
        r.header.seq for r in harness.runner.outbox.items()
    ]


def test_a_refusal_drops_the_report_counts_its_code_and_logs_once(
    harness_durable: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness = harness_durable
    harness.transport.down = True
    (harness.root / "etc" / "motd").write_text("owned\n")
    harness.runner.tick()
    [queued] = harness.runner.outbox.items()
    harness.transport.down = False
    harness.transport.reject = {queued.header.seq}
    harness.clock.advance(60)
    with caplog.at_level(logging.INFO):
        harness.runner.flush()
    assert harness.runner.outbox.items() == () and on_disk(harness) is None
    assert harness.metric("corral_agent_reports_total", result="rejected") == 1
    assert harness.metric("corral_agent_report_failures_total", code="INVALID_ARGUMENT") == 1
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR


def test_a_damaged_outbox_file_is_set_aside_and_the_agent_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(b'corral-agent-outbox 1 00 12\n{"reports":')
    with caplog.at_level(logging.INFO):
        harness = Harness(tmp_path, durable=True)
    assert len(harness.runner.outbox) == 0
    assert not (state / FILE_NAME).exists()
    [aside] = [p for p in state.iterdir() if p.name.startswith(FILE_NAME + ".damaged-")]
    assert aside.read_bytes().endswith(b'{"reports":')
    [line] = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert line.exc_info is None and str(aside) in line.getMessage()
    harness.runner.tick()
    assert len(harness.transport.sent) == 1


def test_an_unwritable_data_dir_is_counted_and_the_reports_stay_in_memory(
    harness_durable: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = harness_durable
    failures: list[OSError] = []
    outbox = harness.runner.outbox
    monkeypatch.setattr(outbox, "_on_write_error", failures.append)

    def full(_reports: object) -> None:
        raise OSError(28, "No space left on device")

    assert harness.outbox_file is not None
    monkeypatch.setattr(harness.outbox_file, "save", full)
    harness.transport.down = True
    harness.runner.tick()
    assert len(outbox) == 1 and failures and failures[0].errno == 28
    harness.transport.down = False
    harness.clock.advance(60)
    harness.runner.flush()
    assert len(harness.transport.sent) == 1


@pytest.fixture
def harness_durable(tmp_path: Path) -> Harness:
    return Harness(tmp_path, durable=True)
