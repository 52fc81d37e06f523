"""corral's one token bucket: the agent's read budget and the controller's rate limits.

The agent must not compete with the workload it watches: the scanner asks the
bucket for the bytes it is about to read, before a batch goes to the hashing
processes, and sleeps when it runs ahead of the budget (:meth:`TokenBucket.take`).
The controller gives each caller identity a bucket of calls and refuses a call
the bucket cannot pay for, with the time until it could
(:meth:`TokenBucket.try_take`; :mod:`controller.security.ratelimit`). The clock
and the sleep are injected so tests run on virtual time.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("_clock", "_sleep", "_stamp", "_tokens", "burst", "rate", "slept")

    """Allows ``rate`` units per second on average, with bursts up to ``burst`` units.

    A request waits until the bucket holds it. One larger than the bucket (a big
    file) waits for a full bucket and is then granted, leaving the bucket in
    debt that the next request waits to repay. Over any run the amount granted
    stays within ``burst`` plus one request of ``rate`` times the elapsed time.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a token bucket's rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self.slept = 0.0
        """Total seconds spent waiting for the budget (for logs and tests)."""

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self, amount: float = 1.0) -> float:
        """Spend ``amount`` if the bucket holds it and return 0.0; else spend nothing and
        return the seconds until it would hold it (never sleeps)."""
        self._refill()
        if self._tokens >= amount:
            self._tokens -= amount
            return 0.0
        return (amount - self._tokens) / self.rate

    def take(self, amount: float) -> None:
        """Spend ``amount`` units, first sleeping until the bucket holds them.

        A request larger than the burst waits for a full bucket and leaves it in debt.
        """
        self._refill()
        needed = min(amount, self.burst)
        if self._tokens < needed:
            wait = (needed - self._tokens) / self.rate
            self._sleep(wait)
            self.slept += wait
            self._refill()
        self._tokens -= amount
