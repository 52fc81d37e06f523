"""How a conformance report writes times, durations and shares (HTML and JSON alike)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(at_ms: int | None) -> str:
    """Epoch ms as ISO 8601 UTC with milliseconds; ``-`` for none."""
    if at_ms is None:
        return "-"
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration(ms: int | float | None) -> str:
    """A duration read at a glance: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{int(ms)} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def percent(share: float | None) -> str:
    """A share as a percentage with two decimals (``99.87 %``); ``n/a`` when undefined."""
    return "n/a" if share is None else f"{share * 100:.2f} %"
