"""Constructors for every audit event the controller records, one per thing that happens.

The orchestration calls these and hands the result to ``AuditLog.append`` (or
``append_in`` inside its own SQLite transaction). Each constructor fixes the
event's shape so that queries can rely on it: which fields are indexed columns
(instance, related instance, group, image) and which go into bounded ``data``.
Actors read ``"agent:<instance>"``, ``"operator:<name>"`` or ``"controller"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypedDict

from agent.manifest.diff import Change, ChangeKind
from agent.paths import display_path
from controller.audit.errors import InvalidEventError
from controller.audit.record import Event, EventKind, JsonValue

# Instance states, as the DESIGN names them; the audit log stores these words.
PENDING = "pending"
CONFORMANT = "conformant"
TAINTED = "tainted"
REPLACING = "replacing"
RETIRED = "retired"
UNKNOWN = "unknown"
STATES = frozenset({PENDING, CONFORMANT, TAINTED, REPLACING, RETIRED, UNKNOWN})

# Drift evidence keeps counts and only the first few paths, so a record stays small.
MAX_EVIDENCE_PATHS = 20
MAX_PATH_CHARS = 256


def instance_transition(
    instance_id: str,
    *,
    at_ms: int,
    actor: str,
    group: str,
    image: str,
    from_state: str | None,
    to_state: str,
    reason: str = "",
    replaces: str | None = None,
) -> Event:
    """An instance changed state; ``from_state`` None means it was launched (first seen).

    ``image`` is the reference the instance runs at that moment: conformance
    queries take an instance's image and group from its latest transition.
    """
    for state in (from_state, to_state):
        if state is not None and state not in STATES:
            raise InvalidEventError(f"unknown instance state {state!r}; one of {sorted(STATES)}")
    return Event(
        kind=EventKind.INSTANCE_STATE,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        instance_id=instance_id,
        related_instance_id=replaces,
        group=group,
        image=image,
        data={"from": from_state, "to": to_state},
    )


def drift_evidence(
    instance_id: str,
    *,
    at_ms: int,
    actor: str,
    group: str,
    image: str,
    kind: str,
    added: int = 0,
    removed: int = 0,
    modified: int = 0,
    first_paths: Sequence[str] = (),
    truncated: bool = False,
    evidence_verified: bool = False,
    reason: str = "",
) -> Event:
    """What drifted: counts of changes and the first few paths (``kind`` image or file)."""
    if kind not in ("image", "file"):
        raise InvalidEventError(f"drift kind must be 'image' or 'file', got {kind!r}")
    paths: list[JsonValue] = [p[:MAX_PATH_CHARS] for p in first_paths[:MAX_EVIDENCE_PATHS]]
    return Event(
        kind=EventKind.DRIFT_EVIDENCE,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        instance_id=instance_id,
        group=group,
        image=image,
        data={
            "drift": kind,
            "added": added,
            "removed": removed,
            "modified": modified,
            "first_paths": paths,
            "paths_truncated": truncated or len(first_paths) > MAX_EVIDENCE_PATHS,
            "evidence_verified": evidence_verified,
        },
    )


class ChangeSummary(TypedDict):
    """The evidence fields of :func:`drift_evidence`, from a list of changes."""

    added: int
    removed: int
    modified: int
    first_paths: list[str]


def summarize_changes(changes: Iterable[Change]) -> ChangeSummary:
    """Counts per change kind and the first displayable paths, for ``drift_evidence(**...)``."""
    counts = {ChangeKind.ADDED: 0, ChangeKind.REMOVED: 0, ChangeKind.MODIFIED: 0}
    paths: list[str] = []
    for change in changes:
        counts[change.kind] += 1
        if len(paths) < MAX_EVIDENCE_PATHS:
            paths.append(display_path(change.path))
    return {
        "added": counts[ChangeKind.ADDED],
        "removed": counts[ChangeKind.REMOVED],
        "modified": counts[ChangeKind.MODIFIED],
        "first_paths": paths,
    }


def taint(
    instance_id: str,
    *,
    at_ms: int,
    actor: str,
    group: str,
    image: str,
    source: str,
    drift_kind: str,
    reason: str,
) -> Event:
    """An instance was tainted (``source`` agent|operator|controller; ``drift_kind``
    image|file|manual)."""
    if source not in ("agent", "operator", "controller"):
        raise InvalidEventError(f"taint source must be agent, operator or controller: {source!r}")
    if drift_kind not in ("image", "file", "manual"):
        raise InvalidEventError(f"taint kind must be image, file or manual: {drift_kind!r}")
    return Event(
        kind=EventKind.TAINT,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        instance_id=instance_id,
        group=group,
        image=image,
        data={"source": source, "drift": drift_kind},
    )


def suspicious(
    instance_id: str, *, at_ms: int, actor: str, group: str, image: str, reason: str
) -> Event:
    """An instance's agent sent drift evidence inconsistent with its own reported root."""
    return Event(
        kind=EventKind.SUSPICIOUS,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        instance_id=instance_id,
        group=group,
        image=image,
    )


def replacement_step(
    *,
    at_ms: int,
    actor: str,
    group: str,
    replacement_id: str,
    idempotency_key: str,
    phase: str,
    old_instance: str,
    new_instance: str | None,
    image: str,
    reason: str = "",
) -> Event:
    """One step of a replacement (e.g. planned, launching, launched, terminating, done, failed)."""
    return Event(
        kind=EventKind.REPLACEMENT_STEP,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        instance_id=old_instance,
        related_instance_id=new_instance,
        group=group,
        image=image,
        data={"phase": phase, "replacement_id": replacement_id, "idempotency_key": idempotency_key},
    )


def image_registered(
    image_ref: str,
    *,
    at_ms: int,
    actor: str,
    digest: str,
    manifest_digest: str,
    name: str = "",
    version: str = "",
    root_hex: str = "",
    entry_count: int = 0,
    reason: str = "",
) -> Event:
    """An image and its baked manifest were registered."""
    return Event(
        kind=EventKind.IMAGE_REGISTERED,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        image=image_ref,
        data={
            "digest": digest,
            "manifest_digest": manifest_digest,
            "name": name,
            "version": version,
            "root": root_hex,
            "entry_count": entry_count,
        },
    )


def group_created(
    group: str, *, at_ms: int, actor: str, image: str, mode: str, reason: str = ""
) -> Event:
    """A group was created with ``image`` as its first desired image."""
    return Event(
        kind=EventKind.GROUP_CREATED,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        group=group,
        image=image,
        data={"mode": mode},
    )


def rollout(
    group: str, *, at_ms: int, actor: str, from_image: str | None, to_image: str, reason: str = ""
) -> Event:
    """The group's desired image changed from ``from_image`` to ``to_image``."""
    return _desired_change(
        EventKind.ROLLOUT,
        group,
        at_ms=at_ms,
        actor=actor,
        from_image=from_image,
        to_image=to_image,
        reason=reason,
    )


def rollback(
    group: str, *, at_ms: int, actor: str, from_image: str | None, to_image: str, reason: str = ""
) -> Event:
    """The group went back to a previous known-good image."""
    return _desired_change(
        EventKind.ROLLBACK,
        group,
        at_ms=at_ms,
        actor=actor,
        from_image=from_image,
        to_image=to_image,
        reason=reason,
    )


def breaker_open(
    group: str, *, at_ms: int, actor: str, tainted: int, size: int, reason: str
) -> Event:
    """The circuit breaker stopped replacements in ``group`` (``tainted`` of ``size``)."""
    return Event(
        kind=EventKind.BREAKER_OPEN,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        group=group,
        data={"tainted": tainted, "size": size},
    )


def breaker_resume(group: str, *, at_ms: int, actor: str, reason: str = "") -> Event:
    """Replacements in ``group`` resumed (usually ``corral group resume`` by an operator)."""
    return Event(
        kind=EventKind.BREAKER_RESUME, at_ms=at_ms, actor=actor, reason=reason, group=group
    )


def _desired_change(
    kind: EventKind,
    group: str,
    *,
    at_ms: int,
    actor: str,
    from_image: str | None,
    to_image: str,
    reason: str,
) -> Event:
    return Event(
        kind=kind,
        at_ms=at_ms,
        actor=actor,
        reason=reason,
        group=group,
        image=to_image,
        data={"from": from_image, "to": to_image},
    )
