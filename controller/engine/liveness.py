"""Background loops that cannot die silently: each run is supervised, each loop watched.

The controller's background work — writing heartbeats behind, the staleness
sweep, the replacement engine (with its leader election) — runs as jobs of one
scheduler. A loop that raises, or stops running, would otherwise leave health
SERVING while nothing is persisted or replaced ("silent loss of monitoring").
So:

- :meth:`Liveness.supervised` wraps a job: every run that returns is recorded
  as a success; every run that raises is counted
  (``corral_background_loop_failures_total``), logged with its traceback on the
  first failure of a streak (then one line per failure), and never propagates;
- :meth:`Liveness.check` (run by the watchdog every second) marks a loop down
  when its last success is older than its ``deadline`` — a loop that keeps
  failing, hangs, or was never scheduled again — and up when it succeeds again.
  ``corral_background_loop_up`` says which; the health service turns
  NOT_SERVING for the gRPC services the loop serves (and the server as a
  whole), and the alert ``CorralBackgroundLoopDown`` fires.

The clock is monotonic (a loop's deadline is about elapsed time, not the wall).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from controller.metrics import ControllerMetrics

log = logging.getLogger("corral.controller")

Job = Callable[[], object]


@dataclass
class _Loop:
    name: str
    deadline: float
    services: tuple[str, ...]
    last_success: float
    failing: bool = False
    up: bool = True
    run_limit: float = 0.0
    last_error: str = ""
    running_since: float | None = None


class Liveness:
    """The supervised loops of one controller and whether each is alive."""

    def __init__(
        self, metrics: ControllerMetrics, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._now = monotonic
        self._loops: dict[str, _Loop] = {}

    def register(
        self,
        name: str,
        *,
        period: float,
        services: Iterable[str] = (),
        run_limit: float | None = None,
    ) -> None:
        """Watch loop ``name``, which should succeed at least every ``period`` seconds.

        It is down after three periods (at least ten seconds) without a success,
        unless a run is in progress and younger than ``run_limit`` (default: that
        same deadline; longer for a loop whose runs wait on slow providers).
        ``services`` are the gRPC service names whose health it carries.
        """
        deadline = max(3 * period, period + 10.0)
        self._loops[name] = _Loop(
            name=name,
            deadline=deadline,
            services=tuple(services),
            last_success=self._now(),
            run_limit=deadline if run_limit is None else run_limit,
        )
        self._metrics.loop_up.labels(loop=name).set(1)
        self._metrics.loop_failures.labels(loop=name)

    def supervised(self, name: str, job: Callable[[], object]) -> Callable[[], Awaitable[None]]:
        """``job`` (a function or a coroutine function) as a coroutine that never raises."""
        is_async = inspect.iscoroutinefunction(job)

        @functools.wraps(job)
        async def run() -> None:
            loop = self._loops[name]
            loop.running_since = self._now()
            try:
                result = job()
                if is_async:
                    await result  # type: ignore[misc]
            except Exception as error:
                self.failed(name, error)
            else:
                self.succeeded(name)
            finally:
                loop.running_since = None

        return run

    def succeeded(self, name: str) -> None:
        loop = self._loops[name]
        loop.last_success = self._now()
        if loop.failing:
            log.info("background loop %s runs again", name, extra={"loop": name})
        loop.failing = False
        self._metrics.loop_last_success.labels(loop=name).set(time.time())

    def failed(self, name: str, error: BaseException) -> None:
        loop = self._loops[name]
        self._metrics.loop_failures.labels(loop=name).inc()
        loop.last_error = str(error)[:500] or type(error).__name__
        if not loop.failing:
            log.error("background loop %s failed", name, exc_info=error, extra={"loop": name})
        else:
            log.warning(
                "background loop %s failed again: %s", name, loop.last_error, extra={"loop": name}
            )
        loop.failing = True

    def check(self) -> list[str]:
        """Update each loop's up/down state; returns the names of the loops down."""
        now = self._now()
        down: list[str] = []
        for loop in self._loops.values():
            # A run in progress excuses lateness only while the loop is not failing: a
            # loop that fails on every run is always "running" when the watchdog looks.
            running = (
                loop.running_since is not None
                and not loop.failing
                and now - loop.running_since <= loop.run_limit
            )
            alive = running or now - loop.last_success <= loop.deadline
            if alive != loop.up:
                if alive:
                    log.info("background loop %s is up again", loop.name, extra={"loop": loop.name})
                else:
                    log.error(
                        "background loop %s is down: no successful run for %.0f s (%s)",
                        loop.name,
                        now - loop.last_success,
                        loop.last_error or "it stopped running",
                        extra={"loop": loop.name},
                    )
                loop.up = alive
                self._metrics.loop_up.labels(loop=loop.name).set(1 if alive else 0)
            if not alive:
                down.append(loop.name)
        return down

    def services_down(self) -> set[str]:
        """The gRPC services served by a loop that is down (after :meth:`check`)."""
        return {
            service for loop in self._loops.values() if not loop.up for service in loop.services
        }
