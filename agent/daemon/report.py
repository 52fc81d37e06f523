"""What the agent tells the controller, as plain values, and the pure rules for it.

A steady-state report is a header only (constant size). A drift report adds
the changes against the baked manifest, bounded so a wholesale rewrite of the
root cannot produce an unbounded message: at most ``max_changes`` changes and
about ``max_bytes`` of evidence, the rest counted in ``total_changes``.
Nothing here imports grpc; :mod:`agent.daemon.transport` converts at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from agent.manifest.diff import Change
from agent.manifest.report import Evidence, Report

# Bytes a change costs on the wire beyond its path, target and attribute names:
# tags, lengths, the 32-byte digest and the integer fields, rounded up.
_CHANGE_OVERHEAD = 96


@dataclass(frozen=True, slots=True)
class PendingReport:
    """A report waiting for delivery: a header, and evidence when the root drifted."""

    header: Report
    evidence: Evidence | None = None

    @property
    def is_drift(self) -> bool:
        return self.evidence is not None


class InstanceState(Enum):
    """The controller's view of this instance, as its responses say."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    CONFORMANT = "conformant"
    TAINTED = "tainted"
    REPLACING = "replacing"
    RETIRED = "retired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The controller's answer to one report."""

    state: InstanceState
    evidence_wanted: bool = False


def change_size(change: Change) -> int:
    """An upper estimate of a change's encoded size, in bytes."""
    size = _CHANGE_OVERHEAD + 2 * len(change.path)  # path in the change and in its entry
    if change.entry is not None:
        size += len(change.entry.link_target)
    return size + sum(len(name) + 2 for name in change.attributes)


def bound_evidence(changes: Sequence[Change], *, max_changes: int, max_bytes: int) -> Evidence:
    """The first changes (in path order) that fit both bounds, and the total count."""
    kept: list[Change] = []
    budget = max_bytes
    for change in changes:
        if len(kept) >= max_changes:
            break
        cost = change_size(change)
        if cost > budget:
            break
        kept.append(change)
        budget -= cost
    return Evidence(
        changes=tuple(kept), truncated=len(kept) < len(changes), total_changes=len(changes)
    )
