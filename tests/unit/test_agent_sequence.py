"""Sequence numbers: strictly increasing within a boot, across agent restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.daemon.sequence import SequenceNumbers
from tests.fixtures.clock import FakeClock


def test_numbers_strictly_increase_even_within_one_millisecond(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    numbers = SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=clock)
    issued = [numbers.next() for _ in range(5)]
    assert issued == list(range(issued[0], issued[0] + 5))
    assert issued[0] == 1_800_000_000_000


def test_a_restart_in_the_same_boot_continues_above_even_if_the_clock_stepped_back(
    tmp_path: Path,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    first = SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=clock)
    last = [first.next() for _ in range(3)][-1]
    clock.advance(-3600)  # NTP stepped the clock back an hour
    again = SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=clock)
    assert again.next() == last + 1
    assert json.loads((tmp_path / "seq.json").read_text()) == {"boot_id": "b1", "seq": last + 1}


def test_a_new_boot_starts_from_the_clock(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    old = SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=clock)
    for _ in range(3):
        old.next()
    clock.set(1_700_000_000.0)
    new = SequenceNumbers(boot_id="b2", data_dir=str(tmp_path), clock=clock)
    assert new.next() == 1_700_000_000_000


def test_lost_state_still_increases_with_the_clock(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    first = SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=clock)
    last = first.next()
    os.unlink(tmp_path / "seq.json")
    clock.advance(1)
    assert SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=clock).next() > last


def test_a_corrupt_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "seq.json").write_text("{garbage")
    numbers = SequenceNumbers(boot_id="b1", data_dir=str(tmp_path), clock=FakeClock(1.0))
    assert numbers.next() == 1000


def test_an_unwritable_data_dir_is_counted_not_fatal(tmp_path: Path) -> None:
    errors: list[OSError] = []
    missing = tmp_path / "not-a-dir"
    missing.write_text("a file where the data dir should be")
    numbers = SequenceNumbers(
        boot_id="b1", data_dir=str(missing), clock=FakeClock(1.0), on_write_error=errors.append
    )
    assert numbers.next() < numbers.next()
    assert len(errors) == 2
