"""The controller's vocabulary as plain, immutable values.

Images, groups, instances, taints and reports are frozen dataclasses so the pure
decision functions (:mod:`controller.domain.drift`, :mod:`controller.domain.states`)
can take them and return new ones without touching a database or the wire.
Times are Unix seconds as floats, from the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from agent.manifest.diff import Change
from agent.manifest.report import Footprint


class InstanceState(Enum):
    """Where an instance is in its life (see :mod:`controller.domain.states`)."""

    PENDING = "pending"
    CONFORMANT = "conformant"
    TAINTED = "tainted"
    REPLACING = "replacing"
    RETIRED = "retired"
    UNKNOWN = "unknown"


class GroupMode(Enum):
    """``observe`` detects and taints only; ``enforce`` also replaces."""

    OBSERVE = "observe"
    ENFORCE = "enforce"


class DriftKind(Enum):
    """Why an instance was tainted."""

    IMAGE = "image"
    FILE = "file"
    MANUAL = "manual"


@dataclass(frozen=True)
class ImageRecord:
    """A registered image: its identity and the digest of its baked manifest."""

    name: str
    version: str
    ref: str
    digest: str
    manifest_digest: str
    root: bytes
    entry_count: int
    byte_count: int
    registered_at: float = 0.0
    registered_by: str = ""

    def same_identity(self, other: ImageRecord) -> bool:
        """True when ``other`` describes the very same image (registration is idempotent)."""
        return (
            self.name,
            self.version,
            self.ref,
            self.digest,
            self.manifest_digest,
            self.root,
            self.entry_count,
            self.byte_count,
        ) == (
            other.name,
            other.version,
            other.ref,
            other.digest,
            other.manifest_digest,
            other.root,
            other.entry_count,
            other.byte_count,
        )


@dataclass(frozen=True)
class Group:
    """A set of interchangeable instances that should all run one desired image."""

    name: str
    desired_image_ref: str
    desired_image_digest: str = ""
    mode: GroupMode = GroupMode.OBSERVE
    provider: str = "local"
    # Replacements in flight at once; 0 means the default, max(1, 10% of the group).
    max_concurrent_replacements: int = 0
    desired_size: int = 0
    breaker_open: bool = False
    # Previous desired image refs, oldest first (for rollback).
    image_history: tuple[str, ...] = ()
    # Bumped by every rollout and rollback; names the rollout replacements.
    generation: int = 0
    breaker_opened_at: float | None = None
    # Taints at or before the last `corral group resume` no longer count.
    breaker_resumed_at: float | None = None
    breaker_reason: str = ""
    # Every image this group has desired before (rollout and rollback add to it): an
    # instance still running one of them is rolled, not tainted as image drift.
    past_images: tuple[str, ...] = ()
    # The stored row's version (see Instance.version).
    version: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Taint:
    """Why and when an instance was tainted, with the evidence the agent sent."""

    kind: DriftKind
    reason: str
    actor: str
    at: float
    changes: tuple[Change, ...] = ()
    evidence_verified: bool = False
    evidence_truncated: bool = False
    #: The agent answered ``evidence_wanted`` with no changes against its own
    #: baseline: that baseline and the registered manifest disagree.
    baseline_mismatch: bool = False


@dataclass(frozen=True)
class Instance:
    """One instance as the controller last saw it."""

    id: str
    group: str
    state: InstanceState
    image_ref: str = ""
    image_digest: str = ""
    root: bytes = b""
    first_seen: float = 0.0
    last_report: float = 0.0
    seq: int = 0
    boot_id: str = ""
    scanned_at_ms: int = 0
    suspicious: bool = False
    taint: Taint | None = None
    footprint: Footprint = field(default_factory=Footprint)
    # For a replacement instance: the id of the instance it replaces.
    replaces: str = ""
    # The version of the stored row this value was read from (0: not stored yet).
    # Every store write is a compare-and-set on it (see controller.ports.Store).
    version: int = field(default=0, compare=False)
