"""What the replacement plan sees: groups, instances and replacement rows as plain values.

The plan (:mod:`controller.domain.replacement`) and the scale-ups it asks for
(:mod:`controller.domain.scale`) both read these; they live apart from either so
neither module imports the other's types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.domain import breaker
from controller.domain.model import GroupMode, InstanceState
from controller.domain.replacement_actions import Kind, Phase, Strategy


@dataclass(frozen=True)
class GroupView:
    """What the plan needs to know about a group."""

    name: str
    mode: GroupMode
    desired_image: str
    """The pinned reference new instances are launched from."""
    strategy: Strategy
    """Declared by the group's provider."""
    size: int = 0
    """Desired instance count; 0 means "count the live instances"."""
    generation: int = 0
    """Bumped by every rollout and rollback (part of rollout idempotency keys)."""
    max_concurrent: int | None = None
    """Explicit budget; None means the default share."""
    breaker: breaker.BreakerState = field(default_factory=breaker.BreakerState)
    fill_to_size: bool = False
    """Launch missing capacity (kind ``scale``) while fewer than ``size`` instances live."""

    def __post_init__(self) -> None:
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(
                f"group {self.name}: the replacement budget must be at least 1, "
                f"got {self.max_concurrent} (use observe mode to stop replacing)"
            )


@dataclass(frozen=True)
class InstanceView:
    """One instance as the plan sees it. Include instances retired within the breaker
    window: their taints still count."""

    instance_id: str
    state: InstanceState
    image: str = ""
    """The image it runs (a pinned reference or a digest)."""
    tainted_at: float | None = None
    taint_id: str | None = None
    """Identifies the taint (stable across restarts); defaults to its time in ms."""


@dataclass(frozen=True)
class LaunchLookup:
    """What the provider holds under a launch key, as the shell found out at ``checked_at``."""

    launch_key: str
    checked_at: float
    instance_id: str | None
    """None: the provider holds nothing under that key."""


@dataclass(frozen=True)
class ReplacementView:
    """A stored replacement record (plus the shell's latest provider lookup, if any)."""

    replacement_id: str
    instance_id: str
    """The instance being replaced."""
    kind: Kind
    idempotency_key: str
    strategy: Strategy
    phase: Phase
    attempt: int = 0
    """Number of the current (or last) launch attempt; 0 before the first."""
    launch_issued_at: float | None = None
    new_instance_id: str | None = None
    old_terminated: bool = False
    launch_error: str | None = None
    """The provider's error for the current attempt, if its launch call failed."""
    retry_at: float | None = None
    """In backoff: when the next attempt may start; None: no attempt left."""
    lookup: LaunchLookup | None = None
