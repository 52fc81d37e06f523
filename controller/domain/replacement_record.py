"""A replacement as the store keeps it: one row per taint, rollout step or scale-up slot.

The engine (:mod:`controller.domain.replacement`) reads these rows as
:class:`~controller.domain.replacement.ReplacementView` values and the
orchestration module (:mod:`controller.engine.replacer`) writes them, always *before*
calling a provider. The row's id is its idempotency key, so recording the same
replacement twice (a replayed start after a crash) finds the row already there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from controller.domain.replacement_actions import Kind, Phase, Strategy
from controller.domain.views import LaunchLookup, ReplacementView


@dataclass(frozen=True)
class ReplacementRecord:
    """One stored replacement; see :mod:`controller.domain.replacement_actions` for phases."""

    replacement_id: str
    """Equal to the idempotency key (unique per group and taint / rollout / slot)."""
    group: str
    instance_id: str
    """The instance being replaced; empty for a scale-up launch."""
    kind: Kind
    strategy: Strategy
    phase: Phase
    image_ref: str
    """The image the current attempt launches (the group's desired image when started)."""
    started_at: float
    """When the need arose: the taint's time, else when it was recorded (for durations)."""
    recorded_at: float
    attempt: int = 0
    launch_issued_at: float | None = None
    new_instance_id: str | None = None
    old_terminated: bool = False
    launch_error: str | None = None
    retry_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    """Why it failed, was abandoned or cancelled (for people)."""
    version: int = field(default=0, compare=False)
    """The stored row's version (compare-and-set, as for instances)."""

    @property
    def idempotency_key(self) -> str:
        return self.replacement_id

    def view(self, lookup: LaunchLookup | None = None) -> ReplacementView:
        """The engine's view of this row, with the shell's latest provider lookup.

        Every field the view shares with the row is copied by name, so a field
        added to both is carried without a second list to keep in step.
        """
        shared = {name: getattr(self, name) for name in _SHARED}
        return ReplacementView(**shared, idempotency_key=self.replacement_id, lookup=lookup)


_SHARED = tuple(
    f.name for f in fields(ReplacementView) if f.name not in ("idempotency_key", "lookup")
)
"""The view's fields that are the row's own (all but the key and the lookup)."""
