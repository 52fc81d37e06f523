"""Operator changes to a group's replacement state: rollout, rollback, resume.

The decisions are pure (:mod:`controller.domain.rollout`,
:func:`controller.domain.breaker.resume`); this module reads the group, applies
them and stores the result. Nothing here launches anything: the replacement
engine notices the new desired image on its next tick and rolls the instances
within the group's budget. Registering an image never calls this. Each change is
stored with its audit event (rollout, rollback, breaker resume) in one write.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from agent.clock import Clock
from controller.audit import events as ev
from controller.audit import trail
from controller.audit.record import Event
from controller.domain import breaker
from controller.domain.model import Group
from controller.domain.rollout import (
    HISTORY_LIMIT,
    Change,
    DesiredImage,
    GroupUpdate,
    rollback,
    rollout,
)
from controller.errors import NotFoundError
from controller.ports import Store

log = logging.getLogger("corral.controller")


@dataclass(frozen=True)
class Moved:
    """A group after a rollout or rollback, and the image it wanted before."""

    group: Group
    previous_image: str
    changed: bool


def rollout_group(
    store: Store, name: str, image_ref: str, *, actor: str, clock: Clock | None = None
) -> Moved:
    """Make the pinned, registered ``image_ref`` the group's desired image.

    Raises NotFoundError (group or image), InvalidArgumentError (not pinned).
    """
    group = _group(store, name)
    registered = [image.ref for image in store.list_images()]
    update = rollout(_desired(group), image_ref, registered)
    return _store(store, group, update, actor=actor, clock=clock)


def rollback_group(store: Store, name: str, *, actor: str, clock: Clock | None = None) -> Moved:
    """Make the previous desired image desired again.

    Raises NotFoundError and FailedPreconditionError (no history).
    """
    group = _group(store, name)
    registered = [image.ref for image in store.list_images()]
    update = rollback(_desired(group), registered_images=registered)
    return _store(store, group, update, actor=actor, clock=clock)


def resume_group(store: Store, name: str, *, clock: Clock, actor: str) -> Group:
    """Close the group's circuit breaker; only later taints can open it again."""
    group = _group(store, name)
    state = breaker.resume(
        breaker.BreakerState(
            open=group.breaker_open,
            opened_at=group.breaker_opened_at,
            resumed_at=group.breaker_resumed_at,
            reason=group.breaker_reason,
        ),
        clock(),
    )
    resumed = replace(
        group,
        breaker_open=state.open,
        breaker_opened_at=state.opened_at,
        breaker_resumed_at=state.resumed_at,
        breaker_reason=state.reason,
    )
    audit: tuple[Event, ...] = ()
    if group.breaker_open:
        audit = (
            ev.breaker_resume(name, at_ms=trail.ms(clock()), actor=trail.operator_actor(actor)),
        )
    store.update_group(resumed, audit=audit)
    log.warning("group resumed by %s", actor, extra={"group": name})
    return resumed


def _group(store: Store, name: str) -> Group:
    group = store.get_group(name)
    if group is None:
        raise NotFoundError(f"group {name!r} is not declared", reason="unknown_group")
    return group


def _desired(group: Group) -> DesiredImage:
    return DesiredImage.of(group, generation=group.generation)


def _store(
    store: Store, group: Group, update: GroupUpdate, *, actor: str, clock: Clock | None
) -> Moved:
    if not update.changed:
        return Moved(group=group, previous_image=update.previous_image, changed=False)
    image = store.get_image_by_ref(update.desired_image)
    past = tuple(dict.fromkeys((*group.past_images, update.previous_image)))[-HISTORY_LIMIT:]
    moved = replace(
        group,
        desired_image_ref=update.desired_image,
        desired_image_digest=image.digest if image is not None else "",
        image_history=update.history,
        generation=update.generation,
        past_images=past,
    )
    event = ev.rollback if update.change is Change.ROLLBACK else ev.rollout
    audit = event(
        group.name,
        at_ms=trail.ms(clock() if clock is not None else time.time()),
        actor=trail.operator_actor(actor),
        from_image=update.previous_image or None,
        to_image=update.desired_image,
    )
    store.update_group(moved, audit=(audit,))
    log.warning(
        "%s by %s: %s -> %s",
        update.change.value,
        actor,
        update.previous_image,
        update.desired_image,
        extra={"group": group.name, "image": update.desired_image},
    )
    return Moved(group=moved, previous_image=update.previous_image, changed=True)
