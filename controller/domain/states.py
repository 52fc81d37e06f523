"""The instance state machine: which moves are allowed, and what silence does.

``pending → conformant → tainted → replacing → retired``, plus ``unknown`` for
silence. Two rules carry the product's promise:

- a tainted instance never returns to conformant (a reverted file does not
  clear a taint: the instance is replaced, never repaired);
- silence is not drift: a silent instance becomes ``unknown``, never ``tainted``,
  and a good report brings an ``unknown`` instance back.
"""

from __future__ import annotations

from dataclasses import replace

from controller.domain.model import Instance, InstanceState
from controller.errors import FailedPreconditionError

_S = InstanceState

# Every allowed move (staying in the same state is always allowed).
TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    _S.PENDING: frozenset({_S.CONFORMANT, _S.TAINTED, _S.UNKNOWN, _S.RETIRED}),
    _S.CONFORMANT: frozenset({_S.TAINTED, _S.UNKNOWN, _S.RETIRED}),
    _S.UNKNOWN: frozenset({_S.CONFORMANT, _S.TAINTED, _S.RETIRED}),
    _S.TAINTED: frozenset({_S.REPLACING, _S.RETIRED}),
    # A replacement that is abandoned leaves the instance tainted.
    _S.REPLACING: frozenset({_S.TAINTED, _S.RETIRED}),
    _S.RETIRED: frozenset(),
}

# States that silence can turn into UNKNOWN. A tainted or replacing instance is
# already on its way out: going silent changes nothing about that.
_SILENCEABLE = frozenset({_S.PENDING, _S.CONFORMANT})


def can_transition(current: InstanceState, target: InstanceState) -> bool:
    """True when an instance in ``current`` may move to ``target``."""
    return current == target or target in TRANSITIONS[current]


def transition(instance: Instance, target: InstanceState) -> Instance:
    """``instance`` in state ``target``. Raises FailedPreconditionError for a forbidden move."""
    if not can_transition(instance.state, target):
        raise FailedPreconditionError(
            f"instance {instance.id} is {instance.state.value} and cannot become {target.value}",
            reason="state",
        )
    if instance.state == target:
        return instance
    return replace(instance, state=target)


def is_stale(
    instance: Instance, *, now: float, stale_after: float, listening_since: float = 0.0
) -> bool:
    """True when ``instance`` has been silent too long and silence may change its state.

    Silence counts from its last report, or from ``listening_since`` (when the
    controller started) if that is later: an agent cannot be heard while the
    controller is down, so a controller restart never makes a fleet look silent.
    """
    if instance.state not in _SILENCEABLE:
        return False
    last = max(instance.last_report or instance.first_seen, listening_since)
    return now - last > stale_after


def on_silence(
    instance: Instance, *, now: float, stale_after: float, listening_since: float = 0.0
) -> Instance | None:
    """The instance marked ``unknown`` if it is stale, else None (nothing to change)."""
    if not is_stale(instance, now=now, stale_after=stale_after, listening_since=listening_since):
        return None
    return transition(instance, InstanceState.UNKNOWN)
