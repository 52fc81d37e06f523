"""How each replacement action is applied: persist the intent, call the provider, persist the
outcome — in that order, as :mod:`controller.domain.replacement_actions` documents.

Writes happen on the event loop; provider calls run in a worker thread
(``asyncio.to_thread``) and carry the launch key, so a call interrupted by a
crash is found again, never repeated blindly. Metrics are counted only after
the write they describe. Every write carries its audit events (actor
``controller``): a replacement row's phase changes, the instances it launches,
moves and retires, and the breaker opening.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import replace

from agent.clock import Clock
from controller.audit import events as ev
from controller.audit import trail
from controller.domain.model import Group, Instance, InstanceState
from controller.domain.refs import image_identity
from controller.domain.replacement_actions import (
    Abandon,
    Action,
    AdoptLaunch,
    Cancel,
    Complete,
    Discard,
    Kind,
    Launch,
    LookupLaunch,
    MarkFailed,
    OpenBreaker,
    Phase,
    StartReplacement,
    Terminate,
)
from controller.domain.replacement_record import ReplacementRecord
from controller.domain.states import transition
from controller.domain.views import LaunchLookup
from controller.errors import ControllerError, NotFoundError
from controller.metrics import ControllerMetrics
from controller.ports import Store
from controller.providers import LaunchSpec, Provider, ProviderError

log = logging.getLogger("corral.replacer")
_S = InstanceState


def new_instance_id(group: str, launch_key: str) -> str:
    """The id a launch gives its instance: derived from the key, so a retry reuses it."""
    return f"{group}-{hashlib.sha256(launch_key.encode()).hexdigest()[:10]}"


class Effects:
    """Applies actions for one store; keeps the provider lookups the next plan needs."""

    def __init__(
        self, store: Store, *, clock: Clock, metrics: ControllerMetrics, controller_address: str
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.controller_address = controller_address
        self.lookups: dict[str, LaunchLookup] = {}

    async def apply(self, action: Action, *, group: Group, provider: Provider) -> None:
        """Apply one action. Raises ControllerError or ProviderError (retried next tick)."""
        if isinstance(action, StartReplacement):
            self._start(action)
        elif isinstance(action, Launch):
            await self._launch(action, provider)
        elif isinstance(action, LookupLaunch):
            await self._lookup(action, group.name, provider)
        elif isinstance(action, AdoptLaunch):
            await self._adopt(action, provider)
        elif isinstance(action, Terminate):
            await self._terminate(action, provider)
        elif isinstance(action, MarkFailed):
            self._mark_failed(action)
        elif isinstance(action, Discard):
            row = self._row(action.replacement_id)
            await asyncio.to_thread(provider.terminate, action.instance_id)
            self._retire(action.instance_id)
            self._update(row, new_instance_id=None)
        elif isinstance(action, Abandon):
            self._abandon(action)
        elif isinstance(action, Cancel):
            row = self._row(action.replacement_id)
            self._update(row, phase=Phase.CANCELLED, finished_at=self.clock(), reason=action.reason)
            log.info("replacement cancelled: %s", action.reason, extra=_extra(row))
        elif isinstance(action, Complete):
            self._complete(action)
        elif isinstance(action, OpenBreaker):
            self._open_breaker(action, group)

    def count_error(self, group: str, error: ControllerError | ProviderError) -> None:
        """Count a step that failed and will be retried (bounded reason label)."""
        self.metrics.replacement_errors.labels(group=group, reason=error.reason).inc()

    # Actions ------------------------------------------------------------------

    def _start(self, action: StartReplacement) -> None:
        now = self.clock()
        old = self.store.get_instance(action.instance_id) if action.instance_id else None
        started = now
        if action.kind is Kind.TAINT and old is not None and old.taint is not None:
            started = old.taint.at
        record = ReplacementRecord(
            replacement_id=action.idempotency_key,
            group=action.group,
            instance_id=action.instance_id,
            kind=action.kind,
            strategy=action.strategy,
            phase=Phase.RECORDED,
            image_ref=action.image_ref,
            started_at=started,
            recorded_at=now,
        )
        created = self.store.add_replacement(
            record, audit=trail.replacement_events(None, record, at_ms=trail.ms(now))
        )
        if old is not None and old.state is _S.TAINTED and action.kind is Kind.TAINT:
            self._save(
                old,
                replace(old, state=_S.REPLACING),
                reason=f"replacement {record.replacement_id} recorded",
            )
        if created:
            log.info("replacement recorded (%s)", action.kind.value, extra=_extra(record))

    async def _launch(self, action: Launch, provider: Provider) -> None:
        row = self._update(
            self._row(action.replacement_id),
            phase=Phase.LAUNCHING,
            attempt=action.attempt,
            image_ref=action.image_ref,
            launch_issued_at=self.clock(),
            launch_error=None,
            new_instance_id=None,
        )
        spec = self._spec(row, launch_key=action.launch_key, image_ref=action.image_ref)
        try:
            launched = await asyncio.to_thread(provider.launch, spec)
        except ProviderError as exc:
            self._update(self._row(row.replacement_id), launch_error=str(exc) or exc.reason)
            log.warning("launch failed: %s", exc, extra=_extra(row))
            return
        if not launched.instance_id:
            return  # capacity managed elsewhere has not started it yet: looked up later
        row = self._row(row.replacement_id)
        self._register(row, launched.instance_id)
        self._update(row, phase=Phase.WAITING_CONFORMANT, new_instance_id=launched.instance_id)
        log.info(
            "replacement launched %s (attempt %d)",
            launched.instance_id,
            action.attempt,
            extra=_extra(row),
        )

    def _spec(self, row: ReplacementRecord, *, launch_key: str, image_ref: str) -> LaunchSpec:
        return LaunchSpec(
            group=row.group,
            image_ref=image_ref,
            image_digest=self._digest(image_ref),
            instance_id=new_instance_id(row.group, launch_key),
            idempotency_key=launch_key,
            controller=self.controller_address,
            not_before=row.recorded_at,
        )

    async def _adopt(self, action: AdoptLaunch, provider: Provider) -> None:
        row = self._row(action.replacement_id)
        lookup = self.lookups.pop(row.replacement_id, None)
        if lookup is not None:
            # Found under its key after a crash cut the launch short (an agent never
            # started, a container never started): launching again under the same key
            # is find-or-create by the provider contract, so it finishes that launch.
            spec = self._spec(row, launch_key=lookup.launch_key, image_ref=row.image_ref)
            await asyncio.to_thread(provider.launch, spec)
        self._register(row, action.new_instance_id)
        self._update(row, phase=Phase.WAITING_CONFORMANT, new_instance_id=action.new_instance_id)
        log.info(
            "replacement adopted %s after a restart", action.new_instance_id, extra=_extra(row)
        )

    async def _lookup(self, action: LookupLaunch, group: str, provider: Provider) -> None:
        held = await asyncio.to_thread(provider.list, group)
        found = next((i for i in held if i.idempotency_key == action.launch_key), None)
        self.lookups[action.replacement_id] = LaunchLookup(
            launch_key=action.launch_key,
            checked_at=self.clock(),
            instance_id=found.instance_id if found is not None and found.instance_id else None,
        )

    async def _terminate(self, action: Terminate, provider: Provider) -> None:
        row = self._update(self._row(action.replacement_id), phase=Phase.TERMINATING_OLD)
        await asyncio.to_thread(provider.terminate, action.instance_id)
        self._retire(action.instance_id)
        self._update(self._row(row.replacement_id), old_terminated=True)
        log.info("old instance %s terminated", action.instance_id, extra=_extra(row))

    def _mark_failed(self, action: MarkFailed) -> None:
        row = self._update(
            self._row(action.replacement_id),
            phase=Phase.BACKOFF,
            retry_at=action.retry_at,
            reason=action.reason,
        )
        self.metrics.replacements.labels(group=row.group, result="failed").inc()
        log.warning("replacement attempt failed: %s", action.reason, extra=_extra(row))

    def _abandon(self, action: Abandon) -> None:
        row = self._update(
            self._row(action.replacement_id),
            phase=Phase.ABANDONED,
            finished_at=self.clock(),
            reason=action.reason,
        )
        old = self.store.get_instance(action.instance_id) if action.instance_id else None
        if old is not None and old.state is _S.REPLACING:
            self._save(old, replace(old, state=_S.TAINTED), reason=f"abandoned: {action.reason}")
        self.metrics.replacements.labels(group=row.group, result="abandoned").inc()
        log.error("replacement abandoned: %s", action.reason, extra=_extra(row))

    def _complete(self, action: Complete) -> None:
        now = self.clock()
        row = self._update(self._row(action.replacement_id), phase=Phase.DONE, finished_at=now)
        self.metrics.replacements.labels(group=row.group, result="succeeded").inc()
        self.metrics.replacement_duration.labels(group=row.group).observe(
            max(0.0, now - row.started_at)
        )
        log.info(
            "replacement done: %s now serves in place of %s",
            action.new_instance_id,
            row.instance_id or "(new capacity)",
            extra=_extra(row),
        )

    def _open_breaker(self, action: OpenBreaker, group: Group) -> None:
        state = action.state
        current = self.store.get_group(group.name) or group
        live = [i for i in self.store.list_instances(group.name) if i.state is not _S.RETIRED]
        opened = ev.breaker_open(
            group.name,
            at_ms=trail.ms(self.clock()),
            actor=trail.CONTROLLER,
            tainted=sum(1 for i in live if i.state in (_S.TAINTED, _S.REPLACING)),
            size=max(current.desired_size, len(live)),
            reason=action.reason[:1024] or "too many taints",
        )
        self.store.update_group(
            replace(
                current,
                breaker_open=state.open,
                breaker_opened_at=state.opened_at,
                breaker_resumed_at=state.resumed_at,
                breaker_reason=state.reason,
            ),
            audit=(opened,),
        )
        log.error(
            "circuit breaker open: %s; run `corral group resume %s`",
            action.reason,
            group.name,
            extra={"group": group.name},
        )

    # Store helpers ------------------------------------------------------------

    def _row(self, replacement_id: str) -> ReplacementRecord:
        row = self.store.get_replacement(replacement_id)
        if row is None:
            raise NotFoundError(f"no replacement {replacement_id!r} is recorded")
        return row

    def _update(self, row: ReplacementRecord, **changes: object) -> ReplacementRecord:
        updated = replace(row, **changes)  # type: ignore[arg-type]
        audit = trail.replacement_events(row, updated, at_ms=trail.ms(self.clock()))
        return self.store.update_replacement(updated, audit=audit)

    def _save(self, before: Instance | None, after: Instance, *, reason: str) -> Instance:
        """Store an instance change the engine made, with its audit events."""
        audit = trail.instance_events(
            before,
            after,
            at_ms=trail.ms(self.clock()),
            actor=trail.CONTROLLER,
            source="controller",
            reason=reason,
        )
        return self.store.save_instance(after, audit=audit)

    def _register(self, row: ReplacementRecord, instance_id: str) -> None:
        """Make the new instance known (pending), or mark an early reporter as a replacement."""
        existing = self.store.get_instance(instance_id)
        if existing is None:
            self._save(
                None,
                Instance(
                    id=instance_id,
                    group=row.group,
                    state=_S.PENDING,
                    image_ref=row.image_ref,
                    first_seen=self.clock(),
                    replaces=row.instance_id,
                ),
                reason=f"launched by replacement {row.replacement_id}",
            )
        elif existing.replaces != row.instance_id:
            self.store.save_instance(replace(existing, replaces=row.instance_id))

    def _retire(self, instance_id: str) -> None:
        instance = self.store.get_instance(instance_id)
        if instance is not None and instance.state is not _S.RETIRED:
            self._save(instance, transition(instance, _S.RETIRED), reason="terminated")

    def _digest(self, image_ref: str) -> str:
        image = self.store.get_image_by_ref(image_ref)
        return image.digest if image is not None else image_identity(image_ref)


def _extra(row: ReplacementRecord) -> dict[str, str]:
    return {"group": row.group, "instance_id": row.instance_id, "replacement": row.replacement_id}
