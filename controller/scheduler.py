"""Periodic sweeps: the staleness sweep marks silent instances ``unknown``.

APScheduler 3.x on the server's event loop. The job is a coroutine so it runs on
the loop itself, between reports, and never races a report for the same
instance. Silence never taints (see :mod:`controller.domain.states`).
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from controller.errors import ControllerError
from controller.service import ControllerService

log = logging.getLogger(__name__)


def start_sweeps(service: ControllerService, *, interval: float) -> AsyncIOScheduler:
    """Start the sweeps on the running event loop; call ``shutdown()`` to stop them."""
    scheduler = AsyncIOScheduler()

    async def sweep_stale() -> None:
        try:
            marked = service.sweep_stale()
        except ControllerError:
            log.exception("staleness sweep failed; it runs again next interval")
            return
        if marked:
            log.info("staleness sweep marked %d instance(s) unknown", marked)

    scheduler.add_job(
        sweep_stale,
        "interval",
        seconds=interval,
        id="staleness",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(service.store.flush, "interval", seconds=30, id="flush", coalesce=True)
    scheduler.start()
    return scheduler
