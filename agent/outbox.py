"""Reports waiting for the controller, bounded, delivered oldest first.

While the controller is unreachable, each scan still produces a report; they
wait here and are delivered in order (their sequence numbers increase) once
it is back. The buffer is bounded in count, and drift reports (which carry
evidence and can be large) in number too. When a bound is hit, reports are
dropped in this order, and each drop is reported to the caller to count:

1. the oldest steady-state report (any but the newest report): it only says
   "still conformant", and later reports say the same or more;
2. a drift report other than the first buffered one (the earliest evidence,
   which matters because a reverted file does not clear a taint) and the newest
   one (the current state): the oldest such first;
3. failing both (a capacity of one or two), the oldest report.

The newest report is never dropped.
"""

from __future__ import annotations

from agent.report import PendingReport


class Outbox:
    """A bounded FIFO of pending reports with the drop policy above."""

    def __init__(self, *, capacity: int, max_drift: int = 8) -> None:
        if capacity < 1 or max_drift < 1:
            raise ValueError("outbox capacity and max_drift must be at least 1")
        self._capacity = capacity
        self._max_drift = max_drift
        self._items: list[PendingReport] = []

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def capacity(self) -> int:
        return self._capacity

    def items(self) -> tuple[PendingReport, ...]:
        return tuple(self._items)

    def push(self, report: PendingReport) -> list[PendingReport]:
        """Append ``report``; returns the reports dropped to stay within bounds."""
        self._items.append(report)
        dropped: list[PendingReport] = []
        while self._drift_count() > self._max_drift:
            dropped.append(self._items.pop(self._drift_victim()))
        while len(self._items) > self._capacity:
            dropped.append(self._items.pop(self._victim()))
        return dropped

    def peek(self) -> PendingReport | None:
        """The oldest report, next to deliver."""
        return self._items[0] if self._items else None

    def pop(self) -> PendingReport:
        """Remove the oldest report (after it was delivered or refused)."""
        return self._items.pop(0)

    def _drift_count(self) -> int:
        return sum(1 for item in self._items if item.is_drift)

    def _drift_victim(self) -> int:
        drift = [i for i, item in enumerate(self._items) if item.is_drift]
        # The first and the newest drift reports are kept while there is a choice.
        middle = drift[1:-1]
        return middle[0] if middle else drift[0]

    def _victim(self) -> int:
        newest = len(self._items) - 1
        for index in range(newest):
            if not self._items[index].is_drift:
                return index
        drift = [i for i, item in enumerate(self._items) if item.is_drift]
        middle = drift[1:-1]  # keep the first and the newest drift reports
        return middle[0] if middle else 0
