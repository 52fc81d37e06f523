"""The read budget keeps a scan at or under its bytes-per-second rate, on virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.manifest.policy import Policy
from agent.scan.scanner import scan
from agent.tokenbucket import TokenBucket
from tests.fixtures.clock import FakeClock


def test_the_bucket_allows_a_burst_then_paces_to_the_rate() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    bucket.take(1000)  # the initial burst is free
    assert clock.sleeps == []
    bucket.take(500)  # the bucket is empty: wait until it holds 500
    assert clock.sleeps == [pytest.approx(0.5)]
    assert bucket.slept == pytest.approx(0.5)


def test_a_request_larger_than_the_burst_leaves_a_debt() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(100, clock=clock, sleep=clock.sleep)
    bucket.take(1000)  # the bucket is full: granted, 900 in debt
    assert clock.sleeps == []
    bucket.take(10)  # repay 900, then wait for 10
    assert clock() - 100.0 == pytest.approx(9.1)


def test_idle_time_refills_the_bucket_up_to_the_burst() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(100, burst=200, clock=clock, sleep=clock.sleep)
    bucket.take(200)
    clock.advance(60)  # a long pause refills at most `burst`
    bucket.take(200)
    assert clock.sleeps == []
    bucket.take(1)
    assert clock.sleeps == [pytest.approx(0.01)]


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_scan_reads_no_faster_than_its_budget(tmp_path: Path, workers: int) -> None:
    for index in range(40):
        (tmp_path / f"f{index}").write_bytes(b"x" * 1000)
    clock = FakeClock(100.0)
    bucket = TokenBucket(4000, clock=clock, sleep=clock.sleep)

    result = scan(tmp_path, Policy(exclude=()), workers=workers, read_budget=bucket)

    assert result.bytes_hashed == 40_000
    # 40 kB at 4 kB/s, the first 4 kB (the burst) free: 9 s of virtual time.
    assert clock() - 100.0 == pytest.approx(9.0)


def test_without_a_budget_a_scan_never_sleeps(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    assert scan(tmp_path, Policy(exclude=())).bytes_hashed == 100_000
