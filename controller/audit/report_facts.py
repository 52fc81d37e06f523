"""The facts a conformance report states, as frozen values (built by :mod:`.report`).

Rendered as HTML (:mod:`.report_html`, :mod:`.report_chart`) and JSON
(:mod:`.report_json`); every number in them is computed from audit records.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from controller.audit.events import CONFORMANT, RETIRED, STATES

CHART_BUCKETS = 240
REPORT_STATES = tuple(sorted(STATES - {RETIRED}))


@dataclass(frozen=True, slots=True)
class GroupShare:
    """One group over the period: instance-time per state and the share conformant."""

    group: str
    instances: int
    state_ms: Mapping[str, int]
    buckets: tuple[float | None, ...]

    @property
    def existing_ms(self) -> int:
        return sum(self.state_ms.values())

    @property
    def conformant_ms(self) -> int:
        return self.state_ms.get(CONFORMANT, 0)

    @property
    def share(self) -> float | None:
        """Conformant instance-time over all instance-time (None when nothing existed)."""
        total = self.existing_ms
        return self.conformant_ms / total if total else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an agent reported as drifted (paths already escaped by ``display_path``)."""

    seq: int
    drift: str
    added: int
    removed: int
    modified: int
    paths: tuple[str, ...]
    paths_truncated: bool
    verified: bool


@dataclass(frozen=True, slots=True)
class Replacement:
    """The instance launched to replace another, and when it first became conformant."""

    instance_id: str
    replaces: str
    group: str
    image: str
    launched_ms: int
    conformant_ms: int | None


@dataclass(frozen=True, slots=True)
class TaintFact:
    """One taint: where, what kind, who detected it, its evidence and what replaced it."""

    seq: int
    at_ms: int
    instance_id: str
    group: str
    image: str
    kind: str
    source: str
    actor: str
    reason: str
    evidence: Evidence | None
    replacement: Replacement | None

    @property
    def to_replacement_ms(self) -> int | None:
        """Taint to replacement conformant, when the replacement got there within the period."""
        if self.replacement is None or self.replacement.conformant_ms is None:
            return None
        return self.replacement.conformant_ms - self.at_ms


@dataclass(frozen=True, slots=True)
class ImageRun:
    """An instance ran the image from ``from_ms`` until ``until_ms`` (None: still at the end)."""

    instance_id: str
    group: str
    from_ms: int
    until_ms: int | None


@dataclass(frozen=True, slots=True)
class DesiredChange:
    """A group's desired image changed (created, rollout, rollback)."""

    seq: int
    at_ms: int
    kind: str
    group: str
    from_image: str | None
    to_image: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """One image: its digest, registration, runs in the period, desired-image changes."""

    image: str
    digest: str | None
    registered_ms: int | None
    registered_by: str | None
    runs: tuple[ImageRun, ...]
    changes: tuple[DesiredChange, ...]

    @property
    def instances(self) -> int:
        return len({r.instance_id for r in self.runs})


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """The breaker opened (``tainted`` of ``size``) or replacements resumed in a group."""

    seq: int
    at_ms: int
    group: str
    opened: bool
    tainted: int | None
    size: int | None
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which records the report was computed from; ``complete`` when nothing came before."""

    first_seq: int | None
    last_seq: int | None
    last_hash: str | None
    first_ms: int | None
    records: int
    complete: bool


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the report says, computed from the audit records."""

    from_ms: int
    to_ms: int
    group: str | None
    groups: tuple[GroupShare, ...]
    instances: tuple[str, ...]
    taints: tuple[TaintFact, ...]
    replacements: tuple[Replacement, ...]
    images: tuple[ImageFacts, ...]
    changes: tuple[DesiredChange, ...]
    breaker: tuple[BreakerEvent, ...]
    suspicious: int
    coverage: Coverage
    buckets: int
    chart_from_ms: int

    @property
    def state_ms(self) -> dict[str, int]:
        """Instance-time per state over every reported group."""
        return {s: sum(g.state_ms.get(s, 0) for g in self.groups) for s in REPORT_STATES}

    @property
    def share(self) -> float | None:
        totals = self.state_ms
        existing = sum(totals.values())
        return totals[CONFORMANT] / existing if existing else None

    @property
    def taints_by_kind(self) -> dict[str, int]:
        counts = {"file": 0, "image": 0, "manual": 0}
        for taint in self.taints:
            counts[taint.kind] = counts.get(taint.kind, 0) + 1
        return counts

    @property
    def manual_taints(self) -> tuple[TaintFact, ...]:
        return tuple(t for t in self.taints if t.kind == "manual")

    @property
    def breaker_openings(self) -> int:
        return sum(1 for b in self.breaker if b.opened)

    @property
    def replaced_conformant(self) -> int:
        return sum(1 for r in self.replacements if r.conformant_ms is not None)

    def taint_to_replacement(self) -> tuple[int | None, int | None, int]:
        """(median, worst, count) of taint to replacement conformant, in ms."""
        times = [t.to_replacement_ms for t in self.taints]
        known = sorted(t for t in times if t is not None)
        if not known:
            return None, None, 0
        return int(statistics.median(known)), known[-1], len(known)
