"""The controller's one scheduler: every background loop, supervised and watched.

APScheduler 3.x on the server's event loop, one instance per process:

- ``flush`` writes heartbeats saved behind to stable storage every
  ``flush_interval`` (in a worker thread: one SQL statement for every row);
- ``staleness`` marks instances silent for too long ``unknown`` (on the loop, so
  it runs between reports; silence never taints, see
  :mod:`controller.domain.states`; every mark is a compare-and-set);
- ``retention`` removes retired instances past ``retired_retention`` from the
  live store, every ten minutes;
- ``replacer`` ticks the replacement engine (leader only; it plans nudged groups
  between ticks too);
- ``watchdog`` checks every second that each of the above succeeded recently
  and sets the health service accordingly (:mod:`controller.engine.liveness`).

Each job is wrapped by :meth:`Liveness.supervised`, so no loop dies silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from controller.engine.liveness import Liveness
from controller.engine.replacer import Replacer
from controller.engine.reports import ControllerService

log = logging.getLogger(__name__)

AGENTS = "corral.v1.AgentService"
FLEET = "corral.v1.FleetService"
WATCHDOG_SECONDS = 1.0
REPLACER_RUN_LIMIT = 900.0
RETENTION_SWEEP_SECONDS = 600.0
"""Retention is counted in days: looking every ten minutes is plenty."""


def start_background(
    service: ControllerService,
    *,
    liveness: Liveness,
    on_health: Callable[[set[str]], Awaitable[None]],
    sweep_interval: float,
    flush_interval: float,
    replacer: Replacer | None = None,
) -> AsyncIOScheduler:
    """Start every loop on the running event loop; ``shutdown()`` the result to stop.

    ``on_health`` gets the set of gRPC services a down loop serves ("" included
    when any loop is down; empty when all are up) whenever that set changes.
    """
    # The jobs run every second or so: APScheduler's "executed successfully" is noise.
    for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    scheduler = AsyncIOScheduler()
    store = service.store

    async def flush() -> None:
        await asyncio.to_thread(store.flush)

    def sweep_stale() -> None:
        marked = service.sweep_stale()
        if marked:
            log.info("staleness sweep marked %d instance(s) unknown", marked)

    jobs: list[tuple[str, Callable[[], object], float, tuple[str, ...], float | None]] = [
        ("flush", flush, flush_interval, (AGENTS,), None),
        ("staleness", sweep_stale, sweep_interval, (FLEET,), None),
        ("retention", service.sweep_retired, RETENTION_SWEEP_SECONDS, (FLEET,), None),
    ]
    if replacer is not None:
        # A tick waits on provider calls (a launch may take minutes): a run in
        # progress counts as alive for up to REPLACER_RUN_LIMIT.
        period = replacer.settings.tick_seconds
        jobs.append(("replacer", replacer.tick, period, (FLEET,), REPLACER_RUN_LIMIT))
    for name, job, period, services, run_limit in jobs:
        liveness.register(name, period=period, services=services, run_limit=run_limit)
        scheduler.add_job(
            liveness.supervised(name, job),
            "interval",
            seconds=period,
            id=name,
            max_instances=1,
            coalesce=True,
        )

    reported: set[str] = set()

    async def watchdog() -> None:
        try:
            down = liveness.check()
            services = liveness.services_down() | ({""} if down else set())
            if services != reported:
                await on_health(services)
                reported.clear()
                reported.update(services)
        except Exception:
            log.exception("the liveness watchdog failed; it runs again in a second")

    scheduler.add_job(watchdog, "interval", seconds=WATCHDOG_SECONDS, id="watchdog", coalesce=True)
    scheduler.start()
    return scheduler
