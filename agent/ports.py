"""The agent's ports: what the runner needs from the outside world, as interfaces.

The runner (the imperative shell) talks to the controller, reads the clock and
scans through these; tests substitute fakes, production wires
:class:`agent.transport.GrpcTransport`, the system clock and :func:`agent.scan.scan`.
"""

from __future__ import annotations

from typing import Protocol

from agent.report import Delivery, PendingReport


class Transport(Protocol):
    """Delivers reports to the controller."""

    def deliver(self, report: PendingReport) -> Delivery:
        """Send one report (``Report`` or, with evidence, ``ReportDrift``).

        Raises RetryableError when the controller is unreachable, overloaded or
        too slow (worth trying again later), and ReportRejectedError when the
        controller refused this report (retrying the same bytes cannot help).
        """
        ...

    def close(self) -> None:
        """Release the connection; deliver() may not be called afterwards."""
        ...


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch (``time.time``)."""

    def __call__(self) -> float: ...
