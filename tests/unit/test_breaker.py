"""The circuit breaker: opens strictly above the threshold, once, and stays open until resumed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.breaker import (
    BreakerSettings,
    BreakerState,
    evaluate,
    resume,
    tolerated_taints,
)

NOW = 10_000.0
DEFAULT = BreakerSettings()


def taints(count: int, at: float = NOW) -> list[float]:
    return [at] * count


@pytest.mark.parametrize(
    ("tainted", "opens"), [(0, False), (3, False), (4, False), (5, True), (6, True)]
)
def test_a_group_of_20_opens_strictly_above_20_percent(tainted: int, opens: bool) -> None:
    decision = evaluate(BreakerState(), taints(tainted), 20, NOW, DEFAULT)
    assert decision.opened is opens
    assert decision.state.open is opens
    assert decision.counted == tainted
    assert decision.limit == 4


def test_opening_records_when_and_why() -> None:
    decision = evaluate(BreakerState(), taints(6), 20, NOW, DEFAULT)
    assert decision.state.opened_at == NOW
    assert decision.state.reason.startswith("6 of 20 instances tainted within 600 s")


@pytest.mark.parametrize(("size", "limit"), [(1, 1), (4, 1), (5, 1), (9, 1), (10, 2), (1000, 200)])
def test_tolerated_taints_is_exact(size: int, limit: int) -> None:
    assert tolerated_taints(size, DEFAULT) == limit


@pytest.mark.parametrize(("size", "limit"), [(1, 0), (4, 0), (5, 1), (9, 1), (10, 2), (1000, 200)])
def test_without_the_floor_the_share_alone_decides(size: int, limit: int) -> None:
    assert tolerated_taints(size, BreakerSettings(min_tolerated=0)) == limit


def test_threshold_boundaries_are_exact_fractions() -> None:
    settings = BreakerSettings(threshold=0.3)
    assert tolerated_taints(10, settings) == 3  # 3/10 is not more than 30%
    assert not evaluate(BreakerState(), taints(3), 10, NOW, settings).opened
    assert evaluate(BreakerState(), taints(4), 10, NOW, settings).opened


def test_one_taint_in_a_small_group_is_replaced_two_open_the_breaker() -> None:
    assert not evaluate(BreakerState(), taints(1), 1, NOW, DEFAULT).opened
    assert not evaluate(BreakerState(), taints(1), 3, NOW, DEFAULT).opened
    assert evaluate(BreakerState(), taints(2), 3, NOW, DEFAULT).opened


def test_without_the_floor_a_single_instance_group_opens_on_its_first_taint() -> None:
    assert evaluate(BreakerState(), taints(1), 1, NOW, BreakerSettings(min_tolerated=0)).opened


def test_only_taints_inside_the_window_count() -> None:
    old = taints(10, at=NOW - 600)  # exactly one window ago: outside
    recent = taints(4, at=NOW - 599)
    future = taints(5, at=NOW + 1)  # not yet: ignored
    decision = evaluate(BreakerState(), old + recent + future, 20, NOW, DEFAULT)
    assert (decision.counted, decision.opened) == (4, False)


def test_an_open_breaker_stays_open_and_reports_opening_once() -> None:
    opened = evaluate(BreakerState(), taints(6), 20, NOW, DEFAULT).state
    later = evaluate(opened, [], 20, NOW + 3600, DEFAULT)
    assert later.state == opened
    assert later.opened is False


def test_a_resumed_breaker_does_not_reopen_for_the_same_taints() -> None:
    opened = evaluate(BreakerState(), taints(6, at=NOW), 20, NOW, DEFAULT).state
    resumed = resume(opened, NOW + 60)
    assert not resumed.open
    again = evaluate(resumed, taints(6, at=NOW), 20, NOW + 61, DEFAULT)
    assert not again.opened and again.counted == 0
    # Five new taints after the resume open it again.
    fresh = evaluate(resumed, taints(6, at=NOW) + taints(5, at=NOW + 70), 20, NOW + 80, DEFAULT)
    assert fresh.opened and fresh.counted == 5


def test_a_taint_at_the_resume_instant_is_forgiven() -> None:
    resumed = resume(BreakerState(), NOW)
    assert evaluate(resumed, taints(20, at=NOW), 20, NOW, DEFAULT).counted == 0


def test_disabled_breaker_and_empty_group_never_open() -> None:
    off = BreakerSettings(enabled=False)
    assert not evaluate(BreakerState(), taints(20), 20, NOW, off).opened
    assert not evaluate(BreakerState(), taints(3), 0, NOW, DEFAULT).opened


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5])
def test_settings_refuse_a_meaningless_threshold(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        BreakerSettings(threshold=threshold)


def test_settings_refuse_an_empty_window() -> None:
    with pytest.raises(ValueError, match="window"):
        BreakerSettings(window_seconds=0)


@given(
    size=st.integers(min_value=1, max_value=5000),
    tainted=st.integers(min_value=0, max_value=5000),
    percent=st.integers(min_value=0, max_value=99),
)
def test_opens_exactly_when_the_share_is_more_than_the_threshold(
    size: int, tainted: int, percent: int
) -> None:
    settings = BreakerSettings(threshold=percent / 100)
    decision = evaluate(BreakerState(), taints(tainted), size, NOW, settings)
    assert decision.opened is (tainted * 100 > percent * size and tainted > 1)
    bare = BreakerSettings(threshold=percent / 100, min_tolerated=0)
    decision = evaluate(BreakerState(), taints(tainted), size, NOW, bare)
    assert decision.opened is (tainted * 100 > percent * size)
