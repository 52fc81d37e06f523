"""The facts of a conformance report, computed from audit records alone.

``build_report`` folds the records of a log as rows (``row.Row``, chain
order, from its start or its pruning checkpoint) once, up to the end of the
period, and returns a frozen :class:`Report`: who existed in the period, the
time-weighted share conformant per group, every taint with its evidence and
the replacement that followed, image runs, rollouts and rollbacks, breaker
openings. Pure: no I/O, no clock; the CLI adds the proof (chain
verification) and renders it.

Time-weighted conformance (docs/audit.md, "Conformance reports"): an
instance's state holds from its transition record up to its next one (the
same convention as ``conformance_at``). Over the period ``[from, to)`` every
instance that exists (any state but ``retired``) contributes its time in each
state; the share conformant is conformant instance-time over all
instance-time. Pending, unknown, tainted and replacing time count as not
conformant, exactly as ``corral audit conformance`` counts them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.audit.events import CONFORMANT, RETIRED
from controller.audit.record import GENESIS_HASH, EventKind, JsonValue
from controller.audit.report_facts import (
    CHART_BUCKETS,
    REPORT_STATES,
    BreakerEvent,
    Coverage,
    DesiredChange,
    Evidence,
    GroupShare,
    ImageFacts,
    ImageRun,
    Replacement,
    Report,
    TaintFact,
)
from controller.audit.report_timeline import GroupClock
from controller.audit.row import KINDS, Row, row_data, unreadable

DESIRED_CHANGES = (EventKind.GROUP_CREATED, EventKind.ROLLOUT, EventKind.ROLLBACK)


@dataclass
class _Instance:
    group: str
    image: str
    state: str
    run_from: int


class _Fold:
    """One pass over the records; everything mutable stays in here."""

    def __init__(self, from_ms: int, to_ms: int, buckets: int) -> None:
        self.start, self.end = from_ms, to_ms
        self.buckets = buckets
        self.set_origin(from_ms)
        self.live: dict[str, _Instance] = {}
        self.clocks: dict[str, GroupClock] = {}
        self.taints: list[dict[str, Any]] = []
        self.open_taint: dict[str, list[int]] = {}
        self.pending_evidence: dict[str, Evidence] = {}
        self.replacement_of: dict[str, str] = {}
        self.replacements: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, list[ImageRun]] = {}
        self.registered: dict[str, tuple[str | None, int, str]] = {}
        self.changes: list[DesiredChange] = []
        self.breaker: list[BreakerEvent] = []
        self.suspicious: list[str] = []
        self.moves: dict[str, tuple[str, bool]] = {}
        self.first: Row | None = None
        self.last: Row | None = None
        self.count = 0
        self.complete = True

    def clock(self, group: str) -> GroupClock:
        found = self.clocks.get(group)
        if found is None:
            found = GroupClock(self.start, self.end, self.origin, self.width, self.buckets)
            self.clocks[group] = found
        return found

    def set_origin(self, at_ms: int) -> None:
        """Where the chart starts: the period's start, or the first record if that is later
        (a period from 0 would otherwise squeeze the whole log into its last slice)."""
        self.origin = min(max(at_ms, self.start), self.end - 1)
        self.width = (self.end - self.origin) / self.buckets

    def in_period(self, at_ms: int) -> bool:
        return self.start <= at_ms <= self.end

    def handlers(self) -> dict[str, Callable[[Row], None] | None]:
        """Which method folds each kind of record (None: that kind changes nothing here)."""
        return dict.fromkeys(KINDS, None) | {
            EventKind.INSTANCE_STATE: self.transition,
            EventKind.TAINT: self.taint,
            EventKind.DRIFT_EVIDENCE: self.evidence,
            EventKind.IMAGE_REGISTERED: self.image,
            EventKind.GROUP_CREATED: self.desired,
            EventKind.ROLLOUT: self.desired,
            EventKind.ROLLBACK: self.desired,
            EventKind.BREAKER_OPEN: self.breaker_event,
            EventKind.BREAKER_RESUME: self.breaker_event,
            EventKind.SUSPICIOUS: self.flagged,
            EventKind.CHECKPOINT: self.snapshot,
        }

    def image(self, row: Row) -> None:
        image = row[8]
        if image is not None:
            digest = row_data(row).get("digest")
            self.registered.setdefault(
                image, (digest if isinstance(digest, str) else None, row[1], row[3])
            )

    def flagged(self, row: Row) -> None:
        group = row[7]
        if self.in_period(row[1]) and group is not None:
            self.suspicious.append(group)

    # Instances ------------------------------------------------------------------

    def transition(self, row: Row) -> None:
        # The hot path: two thirds of a fleet's records. Locals instead of attributes.
        _, at, _, _, _, instance, related, group, image, data, _, _ = row
        if isinstance(data, str):  # stored text: each distinct one decoded once
            move = self.moves.get(data) or self.decode_move(row, data)
        else:
            move = _move(data)
        to, launch = move
        instance, group, image = instance or "", group or "", image or ""
        before = self.live.get(instance)
        same = False
        if before is not None:
            old = self.clocks[before.group]
            same = before.group == group and before.image == image
            if at > old.at:
                old.advance(at)
            old.counts[before.state] -= 1
            if not same or to == RETIRED:
                self.close_run(instance, before, at)
        if to == RETIRED:
            self.live.pop(instance, None)
        else:
            new = self.clocks.get(group) or self.clock(group)
            if at > new.at:
                new.advance(at)
            counts = new.counts
            counts[to] = counts.get(to, 0) + 1
            if same:
                before.state = to  # type: ignore[union-attr]
            else:
                self.live[instance] = _Instance(group, image, to, at)
        if related and launch:
            self.launched(row, to)
        elif to == CONFORMANT and instance in self.replacements:
            replacement = self.replacements[instance]
            if replacement["conformant_ms"] is None:
                replacement["conformant_ms"] = at

    def decode_move(self, row: Row, text: str) -> tuple[str, bool]:
        """The move of transition ``row`` whose data is ``text``, remembered for the next one.

        A fleet's transitions hold few distinct data texts.
        """
        move = self.moves[text] = _move(row_data(row))
        return move

    def close_run(self, instance: str, state: _Instance, at: int) -> None:
        if at > self.start:
            run = ImageRun(instance, state.group, state.run_from, at)
            self.runs.setdefault(state.image, []).append(run)

    def launched(self, row: Row, to: str) -> None:
        _, at, _, _, _, new, old, group, image, _, _, _ = row
        new, old = new or "", old or ""
        self.replacement_of.setdefault(old, new)
        self.replacements[new] = {
            "instance_id": new,
            "replaces": old,
            "group": group or "",
            "image": image or "",
            "launched_ms": at,
            "conformant_ms": at if to == CONFORMANT else None,
        }

    def snapshot(self, row: Row) -> None:
        at = row[1]
        snapshot = row_data(row).get("snapshot")
        if not isinstance(snapshot, dict):
            return
        entries = snapshot.get("instances")
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, list) or len(entry) != 6:
                continue
            instance, group, image, state = (str(v) for v in entry[:4])
            since = entry[4] if isinstance(entry[4], int) else at
            if instance in self.live or state == RETIRED:
                continue
            clock = self.clock(group)
            clock.advance(at)
            clock.counts[state] = clock.counts.get(state, 0) + 1
            self.live[instance] = _Instance(group, image, state, since)
        images = snapshot.get("images")
        for ref, value in images.items() if isinstance(images, dict) else ():
            if isinstance(value, list) and len(value) == 3:
                digest, at_ms, by = value
                self.registered.setdefault(
                    ref, (digest if isinstance(digest, str) else None, _int(at_ms), str(by))
                )

    # Taints and evidence -----------------------------------------------------------

    def taint(self, row: Row) -> None:
        seq, at, _, actor, reason, instance, _, group, image, _, _, _ = row
        instance = instance or ""
        evidence = self.pending_evidence.pop(instance, None)
        if not self.in_period(at):
            return
        data = row_data(row)
        self.open_taint.setdefault(instance, []).append(len(self.taints))
        self.taints.append(
            {
                "seq": seq,
                "at_ms": at,
                "instance_id": instance,
                "group": group or "",
                "image": image or "",
                "kind": str(data.get("drift", "")),
                "source": str(data.get("source", "")),
                "actor": actor,
                "reason": reason,
                "evidence": evidence,
            }
        )

    def evidence(self, row: Row) -> None:
        data = row_data(row)
        paths = data.get("first_paths")
        evidence = Evidence(
            seq=row[0],
            drift=str(data.get("drift", "")),
            added=_int(data.get("added")),
            removed=_int(data.get("removed")),
            modified=_int(data.get("modified")),
            paths=tuple(str(p) for p in paths) if isinstance(paths, list) else (),
            paths_truncated=bool(data.get("paths_truncated")),
            verified=bool(data.get("evidence_verified")),
        )
        instance = row[5] or ""
        opened = self.open_taint.get(instance)
        if opened and self.taints[opened[-1]]["evidence"] is None:
            self.taints[opened[-1]]["evidence"] = evidence
        else:
            self.pending_evidence[instance] = evidence

    # Groups ------------------------------------------------------------------------

    def desired(self, row: Row) -> None:
        seq, at, kind, actor, reason, _, _, group, image, _, _, _ = row
        if not self.in_period(at) or group is None or image is None:
            return
        previous = row_data(row).get("from")
        self.changes.append(
            DesiredChange(
                seq=seq,
                at_ms=at,
                kind=kind,
                group=group,
                from_image=previous if isinstance(previous, str) else None,
                to_image=image,
                actor=actor,
                reason=reason,
            )
        )

    def breaker_event(self, row: Row) -> None:
        seq, at, kind, actor, reason, _, _, group, _, _, _, _ = row
        if not self.in_period(at) or group is None:
            return
        data = row_data(row)
        tainted, size = data.get("tainted"), data.get("size")
        self.breaker.append(
            BreakerEvent(
                seq=seq,
                at_ms=at,
                group=group,
                opened=kind == EventKind.BREAKER_OPEN,
                tainted=tainted if isinstance(tainted, int) else None,
                size=size if isinstance(size, int) else None,
                actor=actor,
                reason=reason,
            )
        )

    # The result --------------------------------------------------------------------

    def finish(self, group: str | None) -> Report:
        for clock in self.clocks.values():
            clock.advance(self.end)
        # Seen: every instance with a run in the period (closed after its start, or still on).
        seen: dict[str, set[str]] = {}
        for runs in self.runs.values():
            for run in runs:
                seen.setdefault(run.group, set()).add(run.instance_id)
        for instance, state in self.live.items():
            seen.setdefault(state.group, set()).add(instance)

        def wanted(name: str) -> bool:
            return group is None or name == group

        shares = tuple(
            GroupShare(
                name,
                len(seen[name]),
                {s: clock.state_ms.get(s, 0) for s in REPORT_STATES},
                clock.shares(),
            )
            for name, clock in sorted(self.clocks.items())
            if wanted(name) and seen.get(name)
        )
        instances = sorted({i for name, ids in seen.items() if wanted(name) for i in ids})
        replacements = {
            new: Replacement(**row)
            for new, row in self.replacements.items()
            if self.in_period(row["launched_ms"])
        }
        taints = tuple(
            self._taint(row, replacements) for row in self.taints if wanted(row["group"])
        )
        return Report(
            from_ms=self.start,
            to_ms=self.end,
            group=group,
            groups=shares,
            instances=tuple(instances),
            taints=taints,
            replacements=tuple(
                sorted(
                    (r for r in replacements.values() if wanted(r.group)),
                    key=lambda r: (r.launched_ms, r.instance_id),
                )
            ),
            images=self._images(wanted),
            changes=tuple(c for c in self.changes if wanted(c.group)),
            breaker=tuple(b for b in self.breaker if wanted(b.group)),
            suspicious=sum(1 for g in self.suspicious if wanted(g)),
            coverage=Coverage(
                first_seq=self.first[0] if self.first else None,
                last_seq=self.last[0] if self.last else None,
                last_hash=self.last[11] if self.last else None,
                first_ms=self.first[1] if self.first else None,
                records=self.count,
                complete=self.complete or self._starts_with_checkpoint(),
            ),
            buckets=self.buckets,
            chart_from_ms=self.origin,
        )

    def _starts_with_checkpoint(self) -> bool:
        first = self.first
        return first is not None and first[2] == EventKind.CHECKPOINT and first[1] <= self.start

    def _taint(self, row: dict[str, Any], replacements: dict[str, Replacement]) -> TaintFact:
        new = self.replacement_of.get(row["instance_id"])
        replacement = replacements.get(new) if new is not None else None
        if replacement is not None and replacement.launched_ms < row["at_ms"]:
            replacement = None
        return TaintFact(**row, replacement=replacement)

    def _images(self, wanted: Callable[[str], bool]) -> tuple[ImageFacts, ...]:
        runs = {image: list(rows) for image, rows in self.runs.items()}
        for instance, state in self.live.items():
            if state.run_from <= self.end:
                runs.setdefault(state.image, []).append(
                    ImageRun(instance, state.group, state.run_from, None)
                )
        changes: dict[str, list[DesiredChange]] = {}
        for change in self.changes:
            changes.setdefault(change.to_image, []).append(change)
            if change.from_image is not None:
                changes.setdefault(change.from_image, []).append(change)
        out = []
        for image in sorted(set(runs) | set(changes)):
            mine = tuple(
                sorted(
                    (r for r in runs.get(image, ()) if wanted(r.group)),
                    key=lambda r: (r.from_ms, r.instance_id),
                )
            )
            moved = tuple(c for c in changes.get(image, ()) if wanted(c.group))
            if not mine and not moved:
                continue
            digest, at_ms, by = self.registered.get(image, (None, None, None))
            out.append(ImageFacts(image, digest, at_ms, by, mine, moved))
        return tuple(out)


def build_report(
    rows: Iterable[Row],
    *,
    from_ms: int,
    to_ms: int,
    group: str | None = None,
    buckets: int = CHART_BUCKETS,
) -> Report:
    """Fold ``rows`` (chain order, from the log's start) into the report of ``[from, to]``.

    Rows after ``to_ms`` are not read. Raises ValueError for an empty or
    inverted period or a bucket count below 1, AuditError for a row of no
    known kind or whose data is not JSON.
    """
    if to_ms <= from_ms:
        raise ValueError("the report period must end after it starts (--to after --from)")
    if buckets < 1:
        raise ValueError("the chart needs at least one bucket")
    fold = _Fold(from_ms, to_ms, buckets)
    handler_of = fold.handlers().get
    stream = iter(rows)
    first = next(stream, None)
    if first is None or first[1] > to_ms:
        return fold.finish(group)
    fold.first = last = first
    fold.complete = first[0] == 1 and first[10] == GENESIS_HASH
    fold.set_origin(first[1])
    count = 0
    for row in itertools.chain((first,), stream):
        if row[1] > to_ms:
            break
        last = row
        count += 1
        handler = handler_of(row[2], _unknown)
        if handler is not None:
            handler(row)
    fold.last, fold.count = last, count
    return fold.finish(group)


def _move(data: Mapping[str, JsonValue]) -> tuple[str, bool]:
    """A transition's target state and whether it has no ``from`` (a launch)."""
    return str(data.get("to")), data.get("from") is None


def _unknown(row: Row) -> None:
    raise unreadable(row[0], f"unknown kind {row[2]!r}")


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
