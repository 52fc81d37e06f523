"""The pure chain check: what verify reports for each kind of damage, without storage."""

from __future__ import annotations

from controller.audit import events as ev
from controller.audit.chain import GENESIS, Position, verify_chain
from controller.audit.record import Record, make_record
from controller.audit.row import Row, row_of


def chain(count: int) -> list[Row]:
    records: list[Record] = []
    prev = GENESIS.hash
    for seq in range(1, count + 1):
        event = ev.breaker_resume("web", at_ms=seq, actor="operator:alice", reason=f"n{seq}")
        records.append(make_record(seq, prev, event))
        prev = records[-1].hash
    return [row_of(record) for record in records]


def head(rows: list[Row]) -> Position:
    return Position(rows[-1][0], rows[-1][11])


def test_intact_chain() -> None:
    records = chain(5)
    result = verify_chain(records, head=head(records))
    assert result.ok and result.checked == 5 and result.last_hash == records[-1][11]
    assert "intact" in result.describe()


def test_empty_log_matches_the_genesis_head() -> None:
    assert verify_chain([], head=GENESIS).ok


def test_edited_content_is_named() -> None:
    records = chain(5)
    head_before = head(records)
    records[2] = (*records[2][:4], "rewritten", *records[2][5:])
    result = verify_chain(records, head=head_before)
    assert not result.ok and result.first_bad_seq == 3 and "edited" in result.problem


def test_a_gap_is_named() -> None:
    records = chain(5)
    result = verify_chain(records[:1] + records[2:], head=head(records))
    assert not result.ok and result.first_bad_seq == 2 and "missing" in result.problem


def test_swapped_records_are_named() -> None:
    records = chain(5)
    swapped = [records[0], records[2], records[1], records[3], records[4]]
    result = verify_chain(swapped, head=head(records))
    assert not result.ok and result.first_bad_seq == 2


def test_a_missing_tail_is_caught_by_the_head() -> None:
    records = chain(5)
    result = verify_chain(records[:3], head=head(records))
    assert not result.ok and result.first_bad_seq == 4 and "4..5" in result.problem


def test_records_beyond_the_head_are_named() -> None:
    records = chain(5)
    result = verify_chain(records, head=Position(3, records[2][11]))
    assert not result.ok and result.first_bad_seq == 4


def test_a_pruned_chain_starts_at_its_base() -> None:
    records = chain(6)
    base = Position(3, records[2][11])
    assert verify_chain(records[3:], base=base, head=head(records)).ok
    wrong = verify_chain(records[3:], base=Position(3, "f" * 64), head=head(records))
    assert not wrong.ok and wrong.first_bad_seq == 4
