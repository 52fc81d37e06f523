"""The instance state machine, exhaustively: every pair of states, and random walks.

The promises under test: a tainted instance never becomes conformant again,
retired is final, and silence makes an instance unknown, never tainted.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.domain.model import Instance, InstanceState
from controller.domain.states import (
    TRANSITIONS,
    can_transition,
    is_stale,
    on_silence,
    transition,
)
from controller.errors import FailedPreconditionError

S = InstanceState
ALLOWED = {
    (S.PENDING, S.CONFORMANT),
    (S.PENDING, S.TAINTED),
    (S.PENDING, S.UNKNOWN),
    (S.PENDING, S.RETIRED),
    (S.CONFORMANT, S.TAINTED),
    (S.CONFORMANT, S.UNKNOWN),
    (S.CONFORMANT, S.RETIRED),
    (S.UNKNOWN, S.CONFORMANT),
    (S.UNKNOWN, S.TAINTED),
    (S.UNKNOWN, S.RETIRED),
    (S.TAINTED, S.REPLACING),
    (S.TAINTED, S.RETIRED),
    (S.REPLACING, S.TAINTED),
    (S.REPLACING, S.RETIRED),
}


def instance(state: InstanceState, *, last_report: float = 100.0) -> Instance:
    return Instance(id="i-1", group="web", state=state, first_seen=50.0, last_report=last_report)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_every_pair_of_states(current: InstanceState, target: InstanceState) -> None:
    allowed = current == target or (current, target) in ALLOWED
    assert can_transition(current, target) is allowed
    before = instance(current)
    if allowed:
        after = transition(before, target)
        assert after.state == target
        assert before.state == current  # values are not mutated
        if current == target:
            assert after is before
    else:
        with pytest.raises(FailedPreconditionError) as raised:
            transition(before, target)
        assert raised.value.reason == "state"
        assert current.value in str(raised.value) and target.value in str(raised.value)


def test_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(S)


def test_tainted_and_replacing_never_reach_conformant() -> None:
    for start in (S.TAINTED, S.REPLACING):
        reachable = {start}
        frontier = [start]
        while frontier:
            for target in TRANSITIONS[frontier.pop()]:
                if target not in reachable:
                    reachable.add(target)
                    frontier.append(target)
        assert S.CONFORMANT not in reachable
        assert S.PENDING not in reachable
        assert S.UNKNOWN not in reachable


def test_retired_is_final() -> None:
    assert TRANSITIONS[S.RETIRED] == frozenset()
    for target in S:
        assert can_transition(S.RETIRED, target) is (target == S.RETIRED)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_random_walks_keep_the_promises(targets: list[InstanceState]) -> None:
    current = instance(S.PENDING)
    tainted = retired = False
    for target in targets:
        try:
            current = transition(current, target)
        except FailedPreconditionError:
            continue
        tainted = tainted or current.state == S.TAINTED
        retired = retired or current.state == S.RETIRED
        if tainted:
            assert current.state in (S.TAINTED, S.REPLACING, S.RETIRED)
        if retired:
            assert current.state == S.RETIRED


class TestSilence:
    @pytest.mark.parametrize("state", list(S))
    def test_silence_never_taints(self, state: InstanceState) -> None:
        silent = on_silence(instance(state), now=10_000.0, stale_after=90.0)
        if state in (S.PENDING, S.CONFORMANT):
            assert silent is not None and silent.state == S.UNKNOWN
        else:
            assert silent is None  # unknown stays unknown; tainted/replacing/retired untouched

    def test_recent_report_is_not_stale(self) -> None:
        fresh = instance(S.CONFORMANT, last_report=1_000.0)
        assert on_silence(fresh, now=1_090.0, stale_after=90.0) is None
        assert is_stale(fresh, now=1_090.1, stale_after=90.0)

    def test_silence_counts_from_when_the_controller_started_listening(self) -> None:
        heard = instance(S.CONFORMANT, last_report=1_000.0)
        # The controller was down until 5_000: nobody could be heard before that.
        assert not is_stale(heard, now=5_090.0, stale_after=90.0, listening_since=5_000.0)
        assert is_stale(heard, now=5_090.1, stale_after=90.0, listening_since=5_000.0)

    def test_never_reported_counts_from_first_seen(self) -> None:
        never = instance(S.PENDING, last_report=0.0)
        assert not is_stale(never, now=140.0, stale_after=90.0)
        assert is_stale(never, now=141.0, stale_after=90.0)

    @settings(max_examples=200)
    @given(
        st.sampled_from(list(S)),
        st.floats(min_value=0, max_value=1e9),
        st.floats(min_value=0, max_value=1e6),
    )
    def test_silence_is_unknown_or_nothing(
        self, state: InstanceState, now: float, stale_after: float
    ) -> None:
        silent = on_silence(instance(state), now=now, stale_after=stale_after)
        assert silent is None or silent.state == S.UNKNOWN

    def test_a_good_report_brings_unknown_back(self) -> None:
        assert transition(instance(S.UNKNOWN), S.CONFORMANT).state == S.CONFORMANT
