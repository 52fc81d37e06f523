"""Exponential backoff with full jitter: bounds, reset, and waiting on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.daemon.backoff import Backoff
from tests.fixtures.clock import FakeClock


def test_the_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=1, cap=60, random=lambda: 1.0)
    assert [backoff.failure() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_full_jitter_can_be_zero() -> None:
    backoff = Backoff(base=1, cap=60, random=lambda: 0.0)
    assert backoff.failure() == 0.0


@given(
    failures=st.integers(min_value=1, max_value=200),
    draw=st.floats(min_value=0.0, max_value=0.999999),
    base=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=10, max_value=3600),
)
def test_every_delay_is_within_zero_and_the_ceiling(
    failures: int, draw: float, base: float, cap: float
) -> None:
    backoff = Backoff(base=base, cap=cap, random=lambda: draw)
    for _ in range(failures):
        delay = backoff.failure()
    assert 0.0 <= delay <= min(cap, base * 2 ** (failures - 1))


def test_success_resets_the_sequence() -> None:
    backoff = Backoff(base=1, cap=60, random=lambda: 1.0)
    for _ in range(5):
        backoff.failure()
    backoff.success()
    assert backoff.failures == 0 and backoff.failure() == 1


def test_a_server_floor_is_honoured_but_never_past_the_cap() -> None:
    backoff = Backoff(base=1, cap=30, random=lambda: 0.0)
    assert backoff.failure(at_least=5) == 5
    assert backoff.failure(at_least=500) == 30


def test_ready_after_the_delay_on_the_injected_clock() -> None:
    clock = FakeClock(0.0)
    backoff = Backoff(base=2, cap=60, random=lambda: 1.0, clock=clock)
    assert backoff.ready()
    backoff.failure()
    assert not backoff.ready() and backoff.remaining() == 2.0
    clock.set(1.999)
    assert not backoff.ready()
    clock.set(2.0)
    assert backoff.ready() and backoff.remaining() == 0.0
