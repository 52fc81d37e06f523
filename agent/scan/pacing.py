"""Politeness while scanning: a bytes-per-second read budget and a way to stop early.

The scanner calls its ``progress`` callback every thousand entries with the
bytes hashed so far; :class:`ScanPacer` sleeps there whenever the scan is ahead
of its budget, so over a scan the average read rate stays at or under the
budget (a single large file between two calls can burst above it). It also
aborts the scan when the agent is asked to stop, so SIGTERM does not wait for
a full walk of the root.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.errors import AgentError


class ScanStoppedError(AgentError):
    """The agent is shutting down; the scan was abandoned."""


class ScanPacer:
    """A ``progress`` callback for one scan: enforces the budget, honours stop requests."""

    def __init__(
        self,
        *,
        budget: int,
        should_stop: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._budget = budget
        self._should_stop = should_stop
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self.slept = 0.0

    def __call__(self, entries: int, bytes_hashed: int) -> None:
        if self._should_stop():
            raise ScanStoppedError("scan abandoned: the agent is stopping")
        if self._budget <= 0:
            return
        ahead = bytes_hashed / self._budget - (self._clock() - self._started)
        if ahead > 0:
            self._sleep(ahead)
            self.slept += ahead
