"""Helpers for tests of the controller: a clock that moves only when told to.

Shipped with the package (not under tests/) so integration tests of other
packages can drive the controller's time the same way.
"""

from __future__ import annotations


class FakeClock:
    """A clock for tests: ``now()`` returns what was set; :meth:`advance` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, now: float) -> None:
        self._now = now
