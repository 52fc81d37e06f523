"""The outbox: bounded, in order, dropping steady-state reports before evidence.

The newest drift report is never dropped. The durable side (what is written
when, and what a restart reads back) is in test_agent_outbox_file.py.
"""

from __future__ import annotations

import pytest

from agent.daemon.outbox import Outbox
from agent.daemon.report import PendingReport
from agent.manifest.report import Evidence, Footprint, Report


def report(seq: int, *, drift: bool = False) -> PendingReport:
    header = Report(
        instance_id="i-1",
        group="g",
        image_ref="r",
        image_digest="d",
        root=bytes(32),
        seq=seq,
        boot_id="b",
        scanned_at_ms=seq,
        footprint=Footprint(0, 0),
        agent_version="v",
    )
    evidence = Evidence(changes=(), truncated=False, total_changes=seq) if drift else None
    return PendingReport(header, evidence)


def seqs(outbox: Outbox) -> list[int]:
    return [item.header.seq for item in outbox.items()]


def test_reports_come_out_in_the_order_they_went_in() -> None:
    outbox = Outbox(capacity=10)
    for seq in range(1, 6):
        assert outbox.push(report(seq)) == []
    out = []
    while outbox:
        peeked = outbox.peek()
        assert peeked is outbox.pop()
        out.append(peeked.header.seq)
    assert out == [1, 2, 3, 4, 5] and outbox.peek() is None


def test_when_full_the_oldest_steady_state_report_goes_first() -> None:
    outbox = Outbox(capacity=3)
    outbox.push(report(1))
    outbox.push(report(2, drift=True))
    outbox.push(report(3))
    [dropped] = outbox.push(report(4))
    assert dropped.header.seq == 1
    assert seqs(outbox) == [2, 3, 4]
    [dropped] = outbox.push(report(5))
    assert dropped.header.seq == 3  # the drift report outlives steady ones
    assert seqs(outbox) == [2, 4, 5]


def test_the_first_and_the_newest_drift_reports_are_kept() -> None:
    outbox = Outbox(capacity=3)
    for seq in range(1, 7):
        outbox.push(report(seq, drift=True))
    assert seqs(outbox) == [1, 5, 6]


def test_the_newest_report_is_kept_while_evidence_can_make_room() -> None:
    outbox = Outbox(capacity=2)
    outbox.push(report(1, drift=True))
    outbox.push(report(2, drift=True))
    outbox.push(report(3))
    assert seqs(outbox) == [2, 3]  # the newest drift and the newest report


def test_a_later_steady_report_never_pushes_out_the_only_drift_report() -> None:
    tiny = Outbox(capacity=1)
    tiny.push(report(1, drift=True))
    [dropped] = tiny.push(report(2))
    assert dropped.header.seq == 2 and seqs(tiny) == [1]
    tiny.push(report(3, drift=True))
    assert seqs(tiny) == [3]  # a newer drift report replaces it


def test_drift_reports_are_bounded_on_their_own() -> None:
    outbox = Outbox(capacity=100, max_drift=3)
    dropped = []
    for seq in range(1, 8):
        dropped += outbox.push(report(seq, drift=seq % 2 == 1))
    # drift: 1, 3, 5, 7 -> one too many; 3 is neither the first nor the newest
    assert [d.header.seq for d in dropped] == [3]
    assert seqs(outbox) == [1, 2, 4, 5, 6, 7]


@pytest.mark.parametrize("capacity", [1, 2, 5, 17])
def test_never_more_than_capacity_and_order_is_kept(capacity: int) -> None:
    outbox = Outbox(capacity=capacity, max_drift=4)
    newest_drift = None
    for seq in range(1, 200):
        drift = seq % 7 == 0
        newest_drift = seq if drift else newest_drift
        outbox.push(report(seq, drift=drift))
        assert len(outbox) <= capacity
        assert seqs(outbox) == sorted(seqs(outbox))
        if newest_drift is not None:
            assert newest_drift in seqs(outbox)
        if capacity > 1 or newest_drift is None:
            assert seqs(outbox)[-1] == seq


def test_a_zero_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(capacity=0)
