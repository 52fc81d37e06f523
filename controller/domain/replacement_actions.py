"""The replacement engine's vocabulary: phases, and the actions the plan asks the shell for.

:func:`controller.domain.replacement.plan` returns these values; the
orchestration module applies them. Each action's docstring is the shell's
contract: what to persist before the provider call, which call to make, and what
to persist after. Every provider call the plan asks for is idempotent (a launch
is find-or-create by its key; terminating an absent instance succeeds), and every
write names its replacement by id, so applying an action twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from controller.domain.breaker import BreakerState


class Strategy(Enum):
    """How a provider replaces: declared by the provider, fixed per replacement."""

    SURGE = "surge"
    """Launch the new instance; terminate the old one once the new one conforms."""
    TERMINATE_FIRST = "terminate_first"
    """Terminate the old instance first (capacity is managed elsewhere, e.g. an ASG)."""


class Kind(Enum):
    """Why an instance is replaced (a metric label and part of the audit trail)."""

    TAINT = "taint"
    """It drifted or an operator tainted it."""
    ROLLOUT = "rollout"
    """It runs another image than the group's desired one (rollout or rollback)."""
    SCALE = "scale"
    """Nothing is replaced: the group has fewer instances than its desired size."""


class Phase(Enum):
    """Where a replacement is; stored on its record."""

    RECORDED = "recorded"
    LAUNCHING = "launching"
    WAITING_CONFORMANT = "waiting_conformant"
    TERMINATING_OLD = "terminating_old"
    BACKOFF = "backoff"
    DONE = "done"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"


class HoldReason(Enum):
    """Why the plan for a group does nothing (reported, never acted on)."""

    OBSERVE = "observe"
    PARTITIONED = "partitioned"
    BREAKER_OPEN = "breaker_open"


@dataclass(frozen=True)
class StartReplacement:
    """Record a new replacement: insert it in phase ``recorded`` with ``attempt=0``.

    Insert-if-absent on ``idempotency_key`` (unique), so a replayed start is a
    no-op; a tainted instance becomes ``replacing`` (a rollout one keeps its
    state). No provider call.
    """

    group: str
    instance_id: str
    kind: Kind
    idempotency_key: str
    strategy: Strategy
    image_ref: str


@dataclass(frozen=True)
class Launch:
    """Launch attempt ``attempt`` of ``image_ref`` under ``launch_key``.

    1. persist ``phase=launching, attempt, launch_key, image_ref,
       launch_issued_at=now, launch_error=None, new_instance_id=None``;
    2. ``provider.launch(group, image_ref, key=launch_key)`` (find-or-create);
    3. on success persist ``new_instance_id`` and ``phase=waiting_conformant``
       (register the new instance as ``pending``); on error persist
       ``launch_error`` only (the next plan looks the key up before judging).
    """

    replacement_id: str
    launch_key: str
    image_ref: str
    attempt: int


@dataclass(frozen=True)
class LookupLaunch:
    """Ask the provider what it holds under ``launch_key``; no write.

    Pass the answer to the next plan as ``ReplacementView.lookup`` with
    ``checked_at`` = the time of the lookup.
    """

    replacement_id: str
    launch_key: str


@dataclass(frozen=True)
class AdoptLaunch:
    """The provider launched ``new_instance_id``: persist it and ``phase=waiting_conformant``.

    When a lookup found it (a crash cut its launch short), first launch again under
    the same key: find-or-create by the provider contract, it finishes whatever the
    crash left undone (an agent or a container never started).
    """

    replacement_id: str
    new_instance_id: str


@dataclass(frozen=True)
class Terminate:
    """Terminate the old instance.

    1. persist ``phase=terminating_old``;
    2. ``provider.terminate(instance_id)`` (an absent instance is success);
    3. persist ``old_terminated=True`` and retire the instance.
    """

    replacement_id: str
    instance_id: str


@dataclass(frozen=True)
class MarkFailed:
    """The current attempt failed: persist ``phase=backoff``, ``retry_at``, the reason.

    Keep ``new_instance_id``: the next plan discards it. ``retry_at`` None means no
    attempt is left (the plan will abandon). Count ``corral_replacements_total
    {result="failed"}`` and write an audit event.
    """

    replacement_id: str
    reason: str
    retry_at: float | None


@dataclass(frozen=True)
class Discard:
    """Remove a failed attempt's instance: ``provider.terminate(instance_id)``, retire it,
    then persist ``new_instance_id=None``."""

    replacement_id: str
    instance_id: str


@dataclass(frozen=True)
class Abandon:
    """Give up: persist ``phase=abandoned``; alert (``corral_replacements_total
    {result="abandoned"}`` and an audit event). The old instance, if still running,
    stays tainted and is not replaced again for the same taint."""

    replacement_id: str
    instance_id: str
    reason: str


@dataclass(frozen=True)
class Cancel:
    """Drop a rollout replacement that is no longer needed (nothing was launched and the
    old instance is untouched): persist ``phase=cancelled``. No provider call."""

    replacement_id: str
    reason: str


@dataclass(frozen=True)
class Complete:
    """Done: persist ``phase=done`` (``corral_replacements_total{result="succeeded"}``,
    ``corral_replacement_duration_seconds``)."""

    replacement_id: str
    new_instance_id: str | None


@dataclass(frozen=True)
class OpenBreaker:
    """The group's breaker just opened: persist ``state``, set ``corral_breaker_open{group}``
    to 1 and write an audit event. Fires once per opening."""

    group: str
    state: BreakerState
    reason: str


@dataclass(frozen=True)
class Hold:
    """Nothing is done for the group, and why (log it; no write, no provider call).

    ``instances`` lists what would be replaced (observe mode).
    """

    group: str
    reason: HoldReason
    detail: str
    instances: tuple[str, ...] = ()


Action = (
    StartReplacement
    | Launch
    | LookupLaunch
    | AdoptLaunch
    | Terminate
    | MarkFailed
    | Discard
    | Abandon
    | Cancel
    | Complete
    | OpenBreaker
    | Hold
)
