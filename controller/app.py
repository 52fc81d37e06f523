"""Wires the controller together: store, service, gRPC server, sweeps, metrics.

One function builds everything from a :class:`~controller.config.ControllerConfig`
with the clock and registry injected, so tests run the real thing in-process on
port 0 with a fake clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from agent.clock import Clock
from controller.api.server import ControllerServer
from controller.config import ControllerConfig
from controller.domain.model import Group
from controller.engine.liveness import Liveness
from controller.engine.replacer import Replacer
from controller.engine.reports import ControllerService
from controller.engine.scheduler import start_background
from controller.engine.wiring import build_replacer
from controller.metrics import ControllerMetrics, FleetCollector
from controller.ports import Leadership, SoleController, Store
from controller.security.serving import security_from_config
from controller.store.wiring import open_store

log = logging.getLogger("corral.controller")


@dataclass
class Controller:
    """A running controller's parts."""

    config: ControllerConfig
    store: Store
    service: ControllerService
    server: ControllerServer
    scheduler: AsyncIOScheduler | None
    replacer: Replacer | None = None
    leadership: Leadership | None = None
    liveness: Liveness | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the background loops, drain in-flight calls, flush and close the store."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        await self.server.stop(grace)
        if self.replacer is not None:
            await self.replacer.stop()
        close = getattr(self.leadership, "close", None)
        if close is not None:
            close()  # a replica that led hands over at once, not when its session times out
        self.store.close()


async def start_controller(
    config: ControllerConfig,
    *,
    clock: Clock,
    registry: CollectorRegistry,
    store: Store | None = None,
    leadership: Leadership | None = None,
    sweeps: bool = True,
    init: bool = False,
) -> Controller:
    """Open the store, declare config groups, start serving. Call on a running loop.

    ``leadership`` says whether this replica runs the replacement engine: by
    default the one that goes with the configured store (an injected ``store``
    is led by this controller alone). ``init`` starts a fresh store where a
    missing, empty or damaged one was found (see :func:`open_store`).
    """
    if store is None:
        store, opened_leadership = open_store(config, init=init)
        leadership = leadership or opened_leadership
    leadership = leadership or SoleController()
    metrics = ControllerMetrics(registry)
    registry.register(FleetCollector(store, clock))
    service = ControllerService(
        store,
        clock=clock,
        metrics=metrics,
        stale_after=config.effective_stale_after,
        max_clock_skew=config.max_clock_skew,
        retired_retention=max(config.retired_retention, config.breaker_window),
    )
    for declared in config.groups:
        service.declare_group(
            Group(
                name=declared.name,
                desired_image_ref=declared.image,
                mode=declared.mode,
                provider=declared.provider,
                desired_size=declared.size,
                max_concurrent_replacements=declared.max_concurrent_replacements,
            )
        )
    service.manifests.warm(
        image
        for group in store.list_groups()
        if (image := store.get_image_by_ref(group.desired_image_ref)) is not None
    )
    server = ControllerServer(
        service,
        listen=config.listen,
        max_message_bytes=config.max_message_bytes,
        max_manifest_bytes=config.max_manifest_bytes,
        security=security_from_config(config),
        providers=frozenset({"local", *(name for name, _ in config.providers)}),
    )
    await server.start()
    scheduler = replacer = liveness = None
    if sweeps:
        replacer = build_replacer(config, service, port=server.port)
        if replacer is not None:
            replacer.leadership = leadership
            service.state_listener = replacer.nudge
        liveness = Liveness(metrics)
        scheduler = start_background(
            service,
            liveness=liveness,
            on_health=server.set_not_serving,
            sweep_interval=config.sweep_interval,
            flush_interval=config.flush_interval,
            replacer=replacer,
        )
    log.info("controller serving", extra={"listen": config.listen, "port": server.port})
    return Controller(config, store, service, server, scheduler, replacer, leadership, liveness)
