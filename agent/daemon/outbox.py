"""Reports waiting for the controller: bounded, oldest first, on disk when it matters.

While the controller is unreachable, each scan still produces a report; they
wait here and are delivered in order (their sequence numbers increase) once it
is back. A report leaves the outbox only when the controller answered it: it
was accepted, or refused definitively (see :mod:`agent.daemon.transport`).

**Bounds.** At most ``capacity`` reports, of which at most ``max_drift`` drift
reports (each drift report's evidence is itself bounded, see
:func:`agent.daemon.report.bound_evidence`). When a bound is hit, reports are dropped
in this order, and each drop is returned to the caller to count:

1. the oldest steady-state report other than the newest report: it only says
   "still conformant", and later reports say the same or more;
2. a drift report other than the first buffered one (the earliest evidence,
   which matters because a reverted file does not clear a taint) and the newest
   one: the oldest such first;
3. the first drift report, when it is not the newest drift report;
4. the newest report, when it is a steady-state one.

**The newest drift report is never dropped**, and since delivery is in order a
later steady-state report never overtakes it.

**Durability.** With an :class:`~agent.daemon.outbox_file.OutboxFile`, the outbox
mirrors itself to disk whenever it holds something that must not be lost: a
drift report (written before its first delivery attempt, so even SIGKILL
cannot lose it) or a report whose delivery failed (:meth:`Outbox.keep`). Once
mirrored, every change rewrites the file, and the file is removed when the
outbox empties. In the steady state (a header-only report queued and delivered
at once) nothing is written: heartbeats cost no fsync. :meth:`Outbox.persist`
writes whatever is queued (at SIGTERM). A failed write is logged and counted
(through ``on_write_error``), never fatal: the reports stay in memory, and the
next change or failed delivery writes again.

Not thread-safe: the runner uses it from one thread at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.daemon.outbox_file import OutboxFile
from agent.daemon.report import PendingReport

log = logging.getLogger(__name__)


class Outbox:
    """A bounded FIFO of pending reports with the drop policy and durability above."""

    def __init__(
        self,
        *,
        capacity: int,
        max_drift: int = 8,
        file: OutboxFile | None = None,
        on_write_error: Callable[[OSError], None] | None = None,
    ) -> None:
        if capacity < 1 or max_drift < 1:
            raise ValueError("outbox capacity and max_drift must be at least 1")
        self._capacity = capacity
        self._max_drift = max_drift
        self._items: list[PendingReport] = []
        self._file = file
        self._on_write_error = on_write_error
        self._mirrored = False
        """True while the file on disk is meant to mirror the outbox."""
        self._write_failing = False

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def path(self) -> str | None:
        """The file the outbox is kept in (None: memory only)."""
        return None if self._file is None else self._file.path

    @property
    def mirrored(self) -> bool:
        """True while the outbox is kept on disk."""
        return self._mirrored

    def items(self) -> tuple[PendingReport, ...]:
        return tuple(self._items)

    def restore(self) -> list[PendingReport]:
        """Load the reports persisted by an earlier run, ahead of anything queued.

        Returns what the bounds dropped (only when the capacity shrank since).
        """
        if self._file is None:
            return []
        loaded = self._file.load()
        if not loaded:
            return []
        self._items[:0] = loaded
        dropped = self._trim()
        self._mirrored = True
        self._write()
        return dropped

    def push(self, report: PendingReport) -> list[PendingReport]:
        """Append ``report``; returns the reports dropped to stay within bounds."""
        self._items.append(report)
        dropped = self._trim()
        if self._mirrored or report.is_drift:
            self._mirrored = self._file is not None
            self._write()
        return dropped

    def peek(self) -> PendingReport | None:
        """The oldest report, next to deliver."""
        return self._items[0] if self._items else None

    def pop(self) -> PendingReport:
        """Remove the oldest report (the controller answered it)."""
        report = self._items.pop(0)
        if self._mirrored:
            self._write()
        return report

    def keep(self) -> None:
        """A delivery failed: from now on, keep what is queued on disk too."""
        if (not self._mirrored or self._write_failing) and self._items and self._file:
            self._mirrored = True
            self._write()

    def persist(self) -> None:
        """Write what is queued now (at shutdown); nothing when the outbox is empty."""
        if self._items and self._file is not None:
            self._mirrored = True
            self._write()

    def _write(self) -> None:
        if self._file is None:
            return
        try:
            if self._items:
                self._file.save(self._items)
            else:
                self._file.remove()
                self._mirrored = False
        except OSError as exc:
            if not self._write_failing:
                log.error(
                    "cannot write the outbox file %s: %s; reports stay in memory only",
                    self._file.path,
                    exc,
                )
            self._write_failing = True
            if self._on_write_error is not None:
                self._on_write_error(exc)
            return
        if self._write_failing:
            log.info("the outbox file %s is written again", self._file.path)
            self._write_failing = False

    def _trim(self) -> list[PendingReport]:
        dropped: list[PendingReport] = []
        while self._drift_count() > self._max_drift:
            dropped.append(self._items.pop(self._drift_victim()))
        while len(self._items) > self._capacity:
            dropped.append(self._items.pop(self._victim()))
        return dropped

    def _drifts(self) -> list[int]:
        return [i for i, item in enumerate(self._items) if item.is_drift]

    def _drift_count(self) -> int:
        return sum(1 for item in self._items if item.is_drift)

    def _drift_victim(self) -> int:
        """Called with at least two drift reports: never the newest one."""
        drift = self._drifts()
        middle = drift[1:-1]  # keep the first and the newest while there is a choice
        return middle[0] if middle else drift[0]

    def _victim(self) -> int:
        newest = len(self._items) - 1
        for index in range(newest):
            if not self._items[index].is_drift:
                return index
        drift = self._drifts()
        if len(drift) >= 2:
            return self._drift_victim()
        # One drift report and the newest report is a steady one: the drift stays.
        return newest
