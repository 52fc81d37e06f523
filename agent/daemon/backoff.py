"""Exponential backoff with full jitter, for retrying delivery to the controller.

When the controller is down, thousands of agents must not retry in lockstep:
each waits a random time between zero and an exponentially growing cap
("full jitter"), so retries spread out and the controller is not stampeded
when it comes back. The random source and the clock are injected so tests
check the bounds without sleeping.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable


class Backoff:
    """Delays for consecutive failures: ``uniform(0, min(cap, base * 2**n))``.

    ``failure()`` records a failed attempt and returns how long to wait;
    ``success()`` resets the sequence; ``ready()`` says whether the wait is over.
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 300.0,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap (got base={base}, cap={cap})")
        self._base = base
        self._cap = cap
        self._random = random
        self._clock = clock
        self._failures = 0
        self._not_before = float("-inf")

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures (at least 1)."""
        exponent = min(max(failures - 1, 0), 62)  # past 2**62 the cap has long won
        return min(self._cap, self._base * float(2**exponent))

    def failure(self, *, at_least: float = 0.0) -> float:
        """Record a failure; returns the delay before the next attempt.

        ``at_least`` is a floor the server asked for (never above the cap).
        """
        self._failures += 1
        delay = max(self._random() * self.ceiling(self._failures), min(at_least, self._cap))
        self._not_before = self._clock() + delay
        return delay

    def success(self) -> None:
        self._failures = 0
        self._not_before = float("-inf")

    def remaining(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self._not_before - self._clock())

    def ready(self) -> bool:
        """True when the delay after the last failure has passed (or nothing failed)."""
        return self._clock() >= self._not_before
