"""Time-travel answers computed from the audit log alone, never from current state.

Everything here is pure: functions fold records (in chain order) into what the
fleet looked like. Adapters may narrow the records with indexes first (the
SQLite adapter reads only the latest transition of each instance), but the
answer is always assembled by these functions, so every adapter agrees.

Record times never decrease along the chain (the log clamps them), so "as of
time T" means "after the last record with ``at_ms <= T``". A checkpoint record
carries a snapshot of the fleet (live instances, desired images, registered
images) so these answers stay complete after older records are pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.audit.events import CONFORMANT, RETIRED
from controller.audit.record import EventKind, JsonValue, Record

DESIRED_KINDS = (EventKind.GROUP_CREATED, EventKind.ROLLOUT, EventKind.ROLLBACK)


@dataclass(frozen=True, slots=True)
class InstanceAt:
    """An instance as of some moment: its group, image and state, and since when."""

    instance_id: str
    group: str
    image: str
    state: str
    since_ms: int
    seq: int


@dataclass(frozen=True, slots=True)
class Conformance:
    """The fleet (or one group) at ``at_ms``: every instance that existed then."""

    at_ms: int
    group: str | None
    instances: tuple[InstanceAt, ...]

    @property
    def total(self) -> int:
        return len(self.instances)

    @property
    def conformant(self) -> int:
        return sum(1 for i in self.instances if i.state == CONFORMANT)

    @property
    def ratio(self) -> float | None:
        """Conformant instances over all that existed (None when there were none)."""
        return self.conformant / self.total if self.instances else None


@dataclass(frozen=True, slots=True)
class InstanceHistory:
    """Every record naming one instance, from its launch to its retirement."""

    instance_id: str
    launched_ms: int | None
    retired_ms: int | None
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class ImageRun:
    """An instance ran the image from ``from_ms`` until ``until_ms`` (None: still running)."""

    instance_id: str
    group: str
    from_ms: int
    until_ms: int | None


@dataclass(frozen=True, slots=True)
class DesiredSpan:
    """The image was the desired image of ``group`` over this span; ``how`` is the event kind."""

    group: str
    from_ms: int
    until_ms: int | None
    actor: str
    how: str


@dataclass(frozen=True, slots=True)
class ImageHistory:
    """One image: registration, where it ran and when it was desired."""

    image: str
    digest: str | None
    registered_ms: int | None
    registered_by: str | None
    runs: tuple[ImageRun, ...]
    desired: tuple[DesiredSpan, ...]


@dataclass
class FleetReplay:
    """A fold over records: the fleet after each applied record (mutable, local only)."""

    latest: dict[str, InstanceAt] = field(default_factory=dict)
    images: dict[str, tuple[str | None, int, str]] = field(default_factory=dict)
    desired: dict[str, DesiredSpan] = field(default_factory=dict)
    desired_image: dict[str, str] = field(default_factory=dict)
    closed_desired: list[tuple[str, DesiredSpan]] = field(default_factory=list)
    open_runs: dict[str, tuple[str, ImageRun]] = field(default_factory=dict)
    closed_runs: list[tuple[str, ImageRun]] = field(default_factory=list)

    def apply(self, record: Record) -> None:
        event = record.event
        if event.kind == EventKind.INSTANCE_STATE:
            self._transition(record)
        elif event.kind == EventKind.IMAGE_REGISTERED and event.image is not None:
            digest = event.data.get("digest")
            by = (None if not isinstance(digest, str) else digest, event.at_ms, event.actor)
            self.images.setdefault(event.image, by)
        elif event.kind in DESIRED_KINDS and event.group and event.image:
            self._desired(event.group, event.image, event.at_ms, event.actor, str(event.kind))
        elif event.kind == EventKind.CHECKPOINT:
            self.load_snapshot(event.data.get("snapshot"))

    def _transition(self, record: Record) -> None:
        event = record.event
        self.transition(
            seq=record.seq,
            instance=event.instance_id or "",
            group=event.group or "",
            image=event.image or "",
            at_ms=event.at_ms,
            to=str(event.data.get("to")),
        )

    def transition(
        self, *, seq: int, instance: str, group: str, image: str, at_ms: int, to: str
    ) -> None:
        """Apply one instance state transition (adapters may call this with bare columns)."""
        self.latest[instance] = InstanceAt(instance, group, image, to, at_ms, seq)
        current = self.open_runs.get(instance)
        if current is not None and (to == RETIRED or current[0] != image):
            run = current[1]
            self.closed_runs.append((current[0], _until(run, at_ms)))
            del self.open_runs[instance]
            current = None
        if current is None and to != RETIRED:
            self.open_runs[instance] = (image, ImageRun(instance, group, at_ms, None))

    def _desired(self, group: str, image: str, at_ms: int, actor: str, how: str) -> None:
        previous = self.desired.pop(group, None)
        if previous is not None:
            old = self.desired_image[group]
            self.closed_desired.append((old, _close(previous, at_ms)))
        self.desired[group] = DesiredSpan(group, at_ms, None, actor, how)
        self.desired_image[group] = image

    def snapshot(self) -> dict[str, JsonValue]:
        """What a checkpoint record stores so answers survive pruning what came before it."""
        return {
            "instances": [
                [i.instance_id, i.group, i.image, i.state, i.since_ms, i.seq]
                for i in sorted(self.latest.values(), key=lambda i: i.instance_id)
                if i.state != RETIRED
            ],
            "desired": {
                g: [self.desired_image[g], span.from_ms, span.actor, span.how]
                for g, span in sorted(self.desired.items())
            },
            "images": {
                ref: [digest, at_ms, by] for ref, (digest, at_ms, by) in sorted(self.images.items())
            },
        }

    def load_snapshot(self, snapshot: Any) -> None:
        """Fill in what a checkpoint knew and this replay does not (records before it pruned)."""
        if not isinstance(snapshot, Mapping):
            return
        for row in snapshot.get("instances", ()):
            instance_id, group, image, state, since_ms, seq = row
            if instance_id not in self.latest:
                self.latest[instance_id] = InstanceAt(
                    instance_id, group, image, state, since_ms, seq
                )
                run = ImageRun(instance_id, group, since_ms, None)
                self.open_runs[instance_id] = (image, run)
        for group, (image, from_ms, actor, how) in snapshot.get("desired", {}).items():
            if group not in self.desired:
                self.desired[group] = DesiredSpan(group, from_ms, None, actor, how)
                self.desired_image[group] = image
        for ref, (digest, at_ms, by) in snapshot.get("images", {}).items():
            self.images.setdefault(ref, (digest, at_ms, by))


def replay(records: Iterable[Record], *, until_ms: int | None = None) -> FleetReplay:
    """Fold ``records`` (chain order) up to and including the last one at or before ``until_ms``."""
    state = FleetReplay()
    for record in records:
        if until_ms is not None and record.event.at_ms > until_ms:
            break
        state.apply(record)
    return state


def conformance_from(
    latest: Iterable[InstanceAt], *, at_ms: int, group: str | None = None
) -> Conformance:
    """The snapshot from each instance's latest state: retired ones no longer exist."""
    rows = sorted(
        (i for i in latest if i.state != RETIRED and (group is None or i.group == group)),
        key=lambda i: i.instance_id,
    )
    return Conformance(at_ms, group, tuple(rows))


def conformance_at(
    records: Iterable[Record], at_ms: int, *, group: str | None = None
) -> Conformance:
    """Every instance that existed at ``at_ms``, its image and state then, and the ratio."""
    state = replay(records, until_ms=at_ms)
    return conformance_from(state.latest.values(), at_ms=at_ms, group=group)


def instance_history(records: Iterable[Record], instance_id: str) -> InstanceHistory:
    """The records that name ``instance_id`` (as subject or as replacement), launch to retire."""
    mine = tuple(
        r for r in records if instance_id in (r.event.instance_id, r.event.related_instance_id)
    )
    launched = retired = None
    for r in mine:
        if r.event.kind == EventKind.INSTANCE_STATE and r.event.instance_id == instance_id:
            if launched is None:
                launched = r.event.at_ms
            if r.event.data.get("to") == RETIRED:
                retired = r.event.at_ms
    return InstanceHistory(instance_id, launched, retired, mine)


def image_history(records: Iterable[Record]) -> tuple[ImageHistory, ...]:
    """Every image: registered when and by whom, where it ran, when each group wanted it."""
    state = replay(records)
    return images_from(state)


def images_from(state: FleetReplay) -> tuple[ImageHistory, ...]:
    """Assemble per-image answers from a finished replay."""
    runs: dict[str, list[ImageRun]] = {}
    for image, run in state.closed_runs:
        runs.setdefault(image, []).append(run)
    for image, run in state.open_runs.values():
        runs.setdefault(image, []).append(run)
    desired: dict[str, list[DesiredSpan]] = {}
    for image, span in state.closed_desired:
        desired.setdefault(image, []).append(span)
    for group, span in state.desired.items():
        desired.setdefault(state.desired_image[group], []).append(span)
    out = []
    for image in sorted(set(state.images) | set(runs) | set(desired)):
        digest, at_ms, by = state.images.get(image, (None, None, None))
        out.append(
            ImageHistory(
                image,
                digest,
                at_ms,
                by,
                tuple(sorted(runs.get(image, ()), key=lambda r: (r.from_ms, r.instance_id))),
                tuple(sorted(desired.get(image, ()), key=lambda d: (d.from_ms, d.group))),
            )
        )
    return tuple(out)


def _until(run: ImageRun, at_ms: int) -> ImageRun:
    return ImageRun(run.instance_id, run.group, run.from_ms, at_ms)


def _close(span: DesiredSpan, at_ms: int) -> DesiredSpan:
    return DesiredSpan(span.group, span.from_ms, at_ms, span.actor, span.how)
