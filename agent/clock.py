"""corral's one clock: a callable returning Unix seconds, ``time.time`` in production.

The agent and the controller take it injected (``clock=time.time``), so tests drive
both with one fake (``tests/fixtures/clock.py``) that moves only when told to.
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch (``time.time``)."""

    def __call__(self) -> float: ...
