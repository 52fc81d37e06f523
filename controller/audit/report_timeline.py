"""One group's instance-time per state over a report's period, and per chart slice.

The report's fold (:mod:`controller.audit.report`) keeps one
:class:`GroupClock` per group: how many instances are in each state now, and
the integral of those counts over time so far, for the whole period and for
each slice of the conformance chart.
"""

from __future__ import annotations

import math

from controller.audit.events import CONFORMANT


class GroupClock:
    """Counts of instances per state in one group and the integral so far.

    ``index`` is the chart slice that ``at`` falls in and ``edge`` where that
    slice ends (infinity for the last), so a step that stays inside the slice,
    the common case, is added without looking the slice up again.
    """

    __slots__ = (
        "at", "bucket_conformant", "bucket_existing", "counts", "edge", "end", "index", "origin",
        "state_ms", "width",
    )  # fmt: skip

    def __init__(self, start: int, end: int, origin: int, width: float, buckets: int) -> None:
        self.end, self.origin, self.width = end, origin, width
        self.counts: dict[str, int] = {}
        self.state_ms: dict[str, int] = {}
        self.bucket_conformant = [0.0] * buckets
        self.bucket_existing = [0.0] * buckets
        self.at = start
        self.index = self.slice_of(start)
        self.edge = self.slice_end(self.index)

    def slice_of(self, at: float) -> int:
        return max(0, min(int((at - self.origin) / self.width), len(self.bucket_existing) - 1))

    def slice_end(self, index: int) -> float:
        """Where chart slice ``index`` ends (infinity for the last: it takes the rest)."""
        if index == len(self.bucket_existing) - 1:
            return math.inf
        return self.origin + (index + 1) * self.width

    def advance(self, to: int) -> None:
        """Integrate the current counts from ``self.at`` up to ``to`` (clipped to the period)."""
        to = min(to, self.end)
        begin = self.at
        if to <= begin:  # also before the period: ``at`` starts at its start
            return
        counts = self.counts
        existing = sum(counts.values())
        if existing:
            span = to - begin
            state_ms = self.state_ms
            for state, count in counts.items():
                if count:
                    state_ms[state] = state_ms.get(state, 0) + count * span
            conformant = counts.get(CONFORMANT, 0)
            if to <= self.edge:
                self.bucket_conformant[self.index] += conformant * span
                self.bucket_existing[self.index] += existing * span
            else:
                self._buckets(begin, to, conformant, existing)
        self.at = to
        if to >= self.edge:
            self.index = self.slice_of(to)
            self.edge = self.slice_end(self.index)

    def _buckets(self, begin: float, end: float, conformant: int, existing: int) -> None:
        index = self.slice_of(begin)
        while True:
            edge = min(end, self.slice_end(index))
            self.bucket_conformant[index] += conformant * (edge - begin)
            self.bucket_existing[index] += existing * (edge - begin)
            if edge == end:
                return
            begin, index = edge, index + 1

    def shares(self) -> tuple[float | None, ...]:
        return tuple(
            c / e if e else None
            for c, e in zip(self.bucket_conformant, self.bucket_existing, strict=True)
        )
