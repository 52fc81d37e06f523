"""The agent's ports: what the runner needs from the outside world, as interfaces.

The runner (the imperative shell) talks to the controller, reads the clock and
scans through these; tests substitute fakes, production wires
:class:`agent.daemon.transport.GrpcTransport`, the system clock and
:class:`agent.daemon.scanjob.SubprocessScanner`.
"""

from __future__ import annotations

from typing import Protocol

from agent.daemon.report import Delivery, PendingReport
from agent.daemon.scanjob import ScanOutcome, ScanRequest


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


class Scanner(Protocol):
    """Scans the root and compares it with the baseline (see :mod:`agent.daemon.scanjob`)."""

    def run(self, request: ScanRequest) -> ScanOutcome:
        """Scan as asked. Raises ScanStoppedError after stop(), AgentError/OSError on failure."""
        ...

    def has_cache(self) -> bool:
        """True when a stat cache from an earlier scan (or run) is available."""
        ...

    def stop(self) -> None:
        """Abandon a scan in progress; later scans are refused."""
        ...
