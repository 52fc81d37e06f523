"""The circuit breaker: stop replacing a group when too much of it is tainted at once.

A bad manifest, a broken agent release or a mass compromise can taint a large
share of a group within minutes. Replacing all of it would destroy the fleet, so
when **more than** ``threshold`` of the group (default 20%) has been tainted
within ``window_seconds`` (default 10 minutes), the breaker opens: no new
replacement starts in that group (in-flight ones may finish), an event is raised
(the shell turns it into ``corral_breaker_open{group}`` and an audit event), and
the group waits for an operator (``corral group resume G``).

The comparison is strict: in a group of 20, 4 taints (exactly 20%) keep the
breaker closed and 5 open it. A single taint never opens it (``min_tolerated``):
in a group of 3, one hand-patched instance is replaced; two at once open it.
Shares are compared as exact fractions of the decimal setting, so no float
rounding moves the boundary.

A resumed breaker counts only taints **after** the resume, so it never re-opens
for the taints that opened it. Pure: time is a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class BreakerSettings:
    """How the breaker judges a group (on by default)."""

    enabled: bool = True
    """False disables the breaker for the group (not recommended)."""
    threshold: float = 0.20
    """The breaker opens when the tainted share is strictly more than this."""
    window_seconds: float = 600.0
    """Only taints this recent count."""
    min_tolerated: int = 1
    """Taints always tolerated, whatever the share: one drifted instance in a group of 3
    is 33% but must still be replaced (set 0 for the bare share)."""

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1:
            raise ValueError(f"breaker threshold must be in [0, 1), got {self.threshold}")
        if self.window_seconds <= 0:
            raise ValueError(f"breaker window must be positive, got {self.window_seconds}")


@dataclass(frozen=True)
class BreakerState:
    """What the store keeps per group about its breaker."""

    open: bool = False
    opened_at: float | None = None
    """When it last opened."""
    resumed_at: float | None = None
    """When an operator last resumed it; taints at or before this no longer count."""
    reason: str = ""
    """Why it opened, for people (empty while closed)."""


@dataclass(frozen=True)
class BreakerDecision:
    """The breaker's verdict for one evaluation."""

    state: BreakerState
    """The state to keep (unchanged unless it just opened)."""
    opened: bool
    """True only on the evaluation that opened it: emit the event once."""
    counted: int
    """Taints that counted (in the window, after the last resume)."""
    limit: int
    """The most taints the group tolerates; one more opens the breaker."""


def tolerated_taints(group_size: int, settings: BreakerSettings) -> int:
    """The largest number of recent taints that keeps the breaker closed."""
    share = Fraction(repr(settings.threshold))
    # count > share * size  <=>  count > floor(share * size)
    return max(settings.min_tolerated, int(share * group_size))


def evaluate(
    state: BreakerState,
    taints_in_window: Iterable[float],
    group_size: int,
    now: float,
    settings: BreakerSettings,
) -> BreakerDecision:
    """Judge the group's recent taints (their times, one per tainted instance).

    Taint times outside ``(now - window, now]`` or at/before the last resume are
    ignored, so the caller may pass a superset. An open breaker stays open until
    :func:`resume`. A disabled breaker, or an empty group, never opens.
    """
    since = now - settings.window_seconds
    if state.resumed_at is not None:
        since = max(since, state.resumed_at)
    counted = sum(1 for at in taints_in_window if since < at <= now)
    limit = tolerated_taints(group_size, settings)
    if state.open or not settings.enabled or group_size <= 0 or counted <= limit:
        return BreakerDecision(state=state, opened=False, counted=counted, limit=limit)
    reason = (
        f"{counted} of {group_size} instances tainted within "
        f"{settings.window_seconds:g} s: more than {settings.threshold:.0%} of the group"
    )
    opened = BreakerState(open=True, opened_at=now, resumed_at=state.resumed_at, reason=reason)
    return BreakerDecision(state=opened, opened=True, counted=counted, limit=limit)


def resume(state: BreakerState, now: float) -> BreakerState:
    """The state after an operator resumed the group (``corral group resume G``).

    Closing forgets the taints so far: only later taints can open it again.
    Resuming a closed breaker also moves the mark (harmless and idempotent enough:
    it only forgives taints the operator has just looked at).
    """
    return BreakerState(open=False, opened_at=state.opened_at, resumed_at=now, reason="")
