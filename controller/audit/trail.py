"""Which audit events a state change writes: domain values in, audit events out.

The orchestration (:mod:`controller.engine.reports`, :mod:`controller.engine.groups`,
:mod:`controller.engine.effects`) compares what it read with what it is about
to store and hands the events from here to the same store write
(``store.save_instance(..., audit=events)``), so the change and its record
commit together. Everything here is pure except :func:`operator_actor`, which
reads the authenticated caller of the RPC being served.

The time-travel queries (:mod:`controller.audit.queries`) take an instance's
group, image and state from its latest ``instance.state`` record, so a
transition is written whenever either the state or the image changes.
"""

from __future__ import annotations

from controller.audit import events as ev
from controller.audit.record import MAX_TEXT, Event
from controller.domain.model import DriftKind, Group, ImageRecord, Instance, Taint
from controller.domain.replacement_record import ReplacementRecord
from controller.security.caller import current_actor

CONTROLLER = "controller"
_ACTOR_PREFIXES = ("operator:", "agent:", "auditor:", CONTROLLER)


def ms(seconds: float) -> int:
    """Clock seconds as the audit log's integer milliseconds."""
    return max(0, int(seconds * 1000))


def agent_actor(instance_id: str) -> str:
    return f"agent:{instance_id}"


def operator_actor(fallback: str) -> str:
    """The authenticated caller (``operator:alice``), else ``fallback`` named as an operator.

    ``fallback`` is what the API could tell without a certificate (the name the
    CLI sends, or the peer address).
    """
    actor = current_actor()
    if actor:
        return actor
    fallback = fallback or "unknown"
    return fallback if fallback.startswith(_ACTOR_PREFIXES) else f"operator:{fallback}"


def instance_events(
    before: Instance | None,
    after: Instance,
    *,
    at_ms: int,
    actor: str,
    source: str,
    reason: str = "",
) -> list[Event]:
    """The events for storing ``after`` where ``before`` was (None: first seen or launched).

    ``source`` says who a new taint comes from (agent, operator, controller).
    Returns [] when nothing an auditor asks about changed (a heartbeat).
    """
    events: list[Event] = []
    image = after.image_ref
    taint = after.taint
    old_taint = before.taint if before is not None else None
    if taint is not None and (old_taint is None or old_taint.at != taint.at):
        if taint.kind is not DriftKind.MANUAL:
            events.append(_evidence(after, taint, at_ms=at_ms, actor=actor))
        events.append(
            ev.taint(
                after.id,
                at_ms=at_ms,
                actor=actor,
                group=after.group,
                image=image,
                source=source,
                drift_kind=taint.kind.value,
                reason=_text(taint.reason),
            )
        )
    elif taint is not None and old_taint is not None and taint.changes and not old_taint.changes:
        events.append(_evidence(after, taint, at_ms=at_ms, actor=actor))
    if after.suspicious and (before is None or not before.suspicious):
        events.append(
            ev.suspicious(
                after.id,
                at_ms=at_ms,
                actor=actor,
                group=after.group,
                image=image,
                reason="drift evidence inconsistent with the reported root",
            )
        )
    if before is None or before.state != after.state or before.image_ref != image:
        events.append(
            ev.instance_transition(
                after.id,
                at_ms=at_ms,
                actor=actor,
                group=after.group,
                image=image,
                from_state=None if before is None else before.state.value,
                to_state=after.state.value,
                reason=_text(reason or (taint.reason if taint is not None else "")),
                replaces=(after.replaces or None) if before is None else None,
            )
        )
    return events


def replacement_events(
    before: ReplacementRecord | None, after: ReplacementRecord, *, at_ms: int
) -> list[Event]:
    """A ``replacement.step`` when the row is new or its phase moved; else []."""
    if before is not None and before.phase == after.phase:
        return []
    return [
        ev.replacement_step(
            at_ms=at_ms,
            actor=CONTROLLER,
            group=after.group,
            replacement_id=after.replacement_id,
            idempotency_key=after.replacement_id,
            phase=after.phase.value,
            old_instance=after.instance_id,
            new_instance=after.new_instance_id,
            image=after.image_ref,
            reason=_text(after.reason),
        )
    ]


def image_events(image: ImageRecord, *, actor: str) -> list[Event]:
    return [
        ev.image_registered(
            image.ref,
            at_ms=ms(image.registered_at),
            actor=actor,
            digest=image.digest,
            manifest_digest=image.manifest_digest,
            name=image.name,
            version=image.version,
            root_hex=image.root.hex(),
            entry_count=image.entry_count,
        )
    ]


def group_events(group: Group, *, at_ms: int, actor: str, reason: str = "") -> list[Event]:
    return [
        ev.group_created(
            group.name,
            at_ms=at_ms,
            actor=actor,
            image=group.desired_image_ref,
            mode=group.mode.value,
            reason=reason,
        )
    ]


def _evidence(instance: Instance, taint: Taint, *, at_ms: int, actor: str) -> Event:
    return ev.drift_evidence(
        instance.id,
        at_ms=at_ms,
        actor=actor,
        group=instance.group,
        image=instance.image_ref,
        kind=taint.kind.value,
        **ev.summarize_changes(taint.changes),
        truncated=taint.evidence_truncated,
        evidence_verified=taint.evidence_verified,
    )


def _text(value: str) -> str:
    return value[:MAX_TEXT]
