"""The replacement engine's shell: per group, plan from the store, then apply each action.

This is the one place where replacement effects happen. Every tick, for each
group, it reads the group, its instances and its replacement rows from the
store, asks :func:`controller.domain.replacement.plan` what to do, and applies
the actions in order through :class:`~controller.engine.effects.Effects`
(persist the intent, call the provider, persist the outcome), planning again
until only waiting is left. Ticks run on the controller's event loop — every
``tick_seconds`` from an APScheduler job, and at once when a report or an
operator changes an instance's state (:meth:`Replacer.nudge`) — so a tick never
races a report for the same row. The job is the controller's scheduler's
(:mod:`controller.engine.scheduler`), supervised like every background loop. Provider
calls run in a worker thread so a slow launch never stalls the reports.

Planning reads a whole group, so a tick does not plan every group: only groups
that were nudged, groups with a replacement in flight (whose grace periods and
backoffs run on the clock), and every group once per ``sweep_seconds`` (scale to
size, partition holds lifting, anything a lost nudge missed). A fleet whose
instances all conform costs one sweep per ``sweep_seconds``, not one per tick.

Only one replacer may act on a store: :class:`Leadership` is the port that says
whether this controller is the one. With SQLite the single controller is the
leader (:class:`SoleController`); replicas on PostgreSQL elect one with an advisory
lock (:class:`controller.store.postgres_leadership.PostgresLeadership`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.clock import Clock
from controller.domain.breaker import BreakerState
from controller.domain.model import Group
from controller.domain.replacement import (
    ACTIVE_PHASES,
    ReplacementSettings,
    instance_view,
    plan,
)
from controller.domain.replacement_actions import Action, Hold, Strategy
from controller.domain.views import GroupView
from controller.engine.effects import Effects
from controller.errors import ControllerError
from controller.metrics import ControllerMetrics
from controller.ports import Leadership, SoleController, Store
from controller.providers import Provider, ProviderError

log = logging.getLogger("corral.replacer")
MAX_ROUNDS = 8
"""Plan-and-apply rounds per group and tick (each round moves every replacement one step)."""


@dataclass(frozen=True)
class ReplacerSettings:
    """How often the engine runs and the engine's own knobs."""

    tick_seconds: float = 1.0
    sweep_seconds: float = 30.0
    """Every group is planned at least this often, nudged or not."""
    nudge_delay: float = 0.1
    """Nudges within this window are planned together: a registration storm of
    thousands of instances costs a few plans of their group, not one per report."""
    engine: ReplacementSettings = field(default_factory=ReplacementSettings)


class Replacer:
    """Runs the replacement plan of every group against its provider."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        metrics: ControllerMetrics,
        providers: Mapping[str, Provider],
        controller_address: str,
        settings: ReplacerSettings,
        leadership: Leadership | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.providers = providers
        self.settings = settings
        self.leadership = leadership or SoleController()
        self.effects = Effects(
            store, clock=clock, metrics=metrics, controller_address=controller_address
        )
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()
        """Groups nudged since they were last planned ("" stands for every group)."""
        self._active: set[str] = set()
        """Groups with a replacement in flight: planned on every tick."""
        self._last_sweep = float("-inf")
        self._nudge_scheduled = False
        self._holds: dict[str, str] = {}
        self._missing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        """Let a tick in progress finish, then release the providers."""
        for task in list(self._tasks):
            task.cancel()
        async with self._lock:
            for provider in self.providers.values():
                provider.close()

    def nudge(self, group: str = "") -> None:
        """Plan ``group`` (every group when empty) soon. Call on the event loop."""
        self._dirty.add(group)
        self._schedule_nudged_tick()

    def _schedule_nudged_tick(self) -> None:
        if self._nudge_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the loop (a test calling the service directly): the job ticks
        self._nudge_scheduled = True
        loop.call_later(self.settings.nudge_delay, self._start_nudged_tick)

    def _start_nudged_tick(self) -> None:
        self._nudge_scheduled = False
        task = asyncio.get_running_loop().create_task(self.tick(include_active=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def tick(self, *, include_active: bool = True) -> None:
        """Plan the groups that are due: nudged ones, and (the job's ticks) those with
        work in flight and, once per sweep, every group. Ticks never overlap."""
        if self._lock.locked():
            return  # the running tick schedules what was nudged meanwhile
        async with self._lock:
            if self.leadership.is_leader():
                self._dirty |= self.leadership.changed_groups()
                for name in self._due_groups(include_active=include_active):
                    if await self._tick_group(name):
                        self._active.add(name)
                    else:
                        self._active.discard(name)
        if self._dirty:
            self._schedule_nudged_tick()  # nudged while this tick ran

    def _due_groups(self, *, include_active: bool) -> list[str]:
        """The groups to plan now; takes the nudges."""
        dirty, self._dirty = self._dirty, set()
        now = self.clock()
        sweep = include_active and now - self._last_sweep >= self.settings.sweep_seconds
        if sweep or "" in dirty:
            if sweep:
                self._last_sweep = now
            return [group.name for group in self.store.list_groups()]
        return sorted(dirty | self._active if include_active else dirty)

    async def _tick_group(self, name: str) -> bool:
        """Plan and apply for one group; True while it has a replacement in flight."""
        for _ in range(MAX_ROUNDS):
            group = self.store.get_group(name)
            if group is None:
                return False
            provider = self._provider(group)
            if provider is None:
                return False
            actions = self.plan(group, provider)
            moving = [a for a in actions if not isinstance(a, Hold)]
            self._log_holds(name, [a for a in actions if isinstance(a, Hold)])
            if not moving:
                return self._in_flight(name)
            for action in moving:
                try:
                    await self.effects.apply(action, group=group, provider=provider)
                except (ControllerError, ProviderError) as exc:
                    self.effects.count_error(group.name, exc)
                    log.warning(
                        "replacement step %s failed: %s (retried next tick)",
                        type(action).__name__,
                        exc,
                        extra={"group": name},
                    )
                    return self._in_flight(name)
        return self._in_flight(name)

    def _in_flight(self, group: str) -> bool:
        return any(r.phase in ACTIVE_PHASES for r in self.store.list_replacements(group))

    def plan(self, group: Group, provider: Provider) -> list[Action]:
        """The engine's next actions for ``group`` (pure; nothing applied)."""
        view = group_view(group, Strategy(provider.replacement_strategy.value))
        instances = [instance_view(i) for i in self.store.list_instances(group.name)]
        rows = [
            r.view(self.effects.lookups.get(r.replacement_id))
            for r in self.store.list_replacements(group.name)
        ]
        return plan(view, instances, rows, self.clock(), self.settings.engine)

    def _provider(self, group: Group) -> Provider | None:
        provider = self.providers.get(group.provider)
        if provider is None and group.name not in self._missing:
            self._missing.add(group.name)
            log.warning(
                "group %s uses provider %r, which this controller has not configured: "
                "nothing is replaced in it",
                group.name,
                group.provider,
                extra={"group": group.name},
            )
        return provider

    def _log_holds(self, group: str, holds: list[Hold]) -> None:
        detail = "; ".join(h.detail for h in holds)
        if detail and self._holds.get(group) != detail:
            log.info("group holds: %s", detail, extra={"group": group})
        self._holds[group] = detail


def group_view(group: Group, strategy: Strategy) -> GroupView:
    """The plan's view of a stored group."""
    return GroupView(
        name=group.name,
        mode=group.mode,
        desired_image=group.desired_image_ref,
        strategy=strategy,
        size=group.desired_size,
        generation=group.generation,
        max_concurrent=group.max_concurrent_replacements or None,
        breaker=BreakerState(
            open=group.breaker_open,
            opened_at=group.breaker_opened_at,
            resumed_at=group.breaker_resumed_at,
            reason=group.breaker_reason,
        ),
        fill_to_size=group.desired_size > 0,
    )
