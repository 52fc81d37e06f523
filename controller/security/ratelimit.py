"""Per-identity token buckets (:class:`agent.tokenbucket.TokenBucket`), so one flooding
caller cannot starve the others.

Each identity (``agent:i-1``) has a bucket of ``burst`` tokens refilled at
``per_second``; a call spends one token or is refused with the time until one
is available. The buckets live in an LRU of at most ``max_identities`` entries:
a forgotten identity comes back with a full bucket, which is the generous side
to err on, and memory stays bounded however many certificates exist. Pure: the
clock is injected (monotonic seconds), nothing sleeps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from agent.tokenbucket import TokenBucket
from controller.security.errors import RateLimitedError


@dataclass(frozen=True)
class Rate:
    """``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError(
                f"a rate needs per_second > 0 and burst >= 1 (got {self.per_second}, {self.burst})"
            )


class RateLimiter:
    """Token buckets keyed by identity, bounded in number."""

    def __init__(
        self,
        rate: Rate,
        *,
        clock: Callable[[], float],
        max_identities: int = 100_000,
    ) -> None:
        if max_identities <= 0:
            raise ValueError(f"max_identities must be positive (got {max_identities})")
        self.rate = rate
        self._clock = clock
        self._max = max_identities
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def try_acquire(self, key: str) -> float:
        """Spend a token for ``key``: 0.0 if granted, else seconds until one is available."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate.per_second, burst=self.rate.burst, clock=self._clock)
        self._buckets[key] = bucket
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return bucket.try_take()

    def acquire(self, key: str) -> None:
        """Spend a token for ``key`` or raise RateLimitedError with a retry hint."""
        wait = self.try_acquire(key)
        if wait > 0:
            raise RateLimitedError(
                f"{key} is over its rate limit of {self.rate.per_second:g}/s "
                f"(burst {self.rate.burst:g}); retry in {wait:.2f} s",
                retry_after=wait,
            )
