"""The report's facts, folded from hand-written histories whose answers are worked out here."""

from __future__ import annotations

import pytest

from controller.audit import events as ev
from controller.audit.errors import AuditError
from controller.audit.memory import MemoryAuditLog
from controller.audit.report import build_report
from controller.audit.row import Row

V1 = "web@sha256:" + "1" * 64
V2 = "web@sha256:" + "2" * 64
S = 1000  # one second in ms


class History:
    """A memory log and terse helpers: times are in seconds."""

    def __init__(self) -> None:
        self.log = MemoryAuditLog()
        self.log.append(
            ev.image_registered(V1, at_ms=0, actor="operator:a", digest="d1", manifest_digest="m1")
        )
        self.log.append(
            ev.group_created("web", at_ms=0, actor="operator:a", image=V1, mode="enforce")
        )
        self.log.append(
            ev.group_created("db", at_ms=0, actor="operator:a", image=V1, mode="enforce")
        )
        self.states: dict[str, str] = {}

    def move(
        self,
        at: float,
        instance: str,
        to: str,
        *,
        group: str = "web",
        image: str = V1,
        replaces: str | None = None,
    ) -> None:
        self.log.append(
            ev.instance_transition(
                instance,
                at_ms=int(at * S),
                actor="controller",
                group=group,
                image=image,
                from_state=self.states.get(instance),
                to_state=to,
                replaces=replaces,
            )
        )
        self.states[instance] = to

    def taint(
        self,
        at: float,
        instance: str,
        *,
        kind: str = "file",
        reason: str = "",
        actor: str = "agent:x",
        group: str = "web",
        paths: tuple[str, ...] = (),
    ) -> None:
        at_ms = int(at * S)
        if kind != "manual":
            self.log.append(
                ev.drift_evidence(
                    instance,
                    at_ms=at_ms,
                    actor=actor,
                    group=group,
                    image=V1,
                    kind=kind,
                    modified=len(paths),
                    first_paths=list(paths),
                    evidence_verified=True,
                )
            )
        source = "operator" if kind == "manual" else "agent"
        self.log.append(
            ev.taint(
                instance,
                at_ms=at_ms,
                actor=actor,
                group=group,
                image=V1,
                source=source,
                drift_kind=kind,
                reason=reason,
            )
        )
        self.move(at, instance, "tainted", group=group)

    def rows(self) -> list[Row]:
        return list(self.log.rows())


def test_time_weighted_share_clips_to_the_period_and_counts_every_live_state() -> None:
    h = History()
    # Appended in time order: the log never lets a record's time go backwards.
    h.move(0, "a", "pending")
    h.move(5, "b", "conformant")
    h.move(10, "a", "conformant")  # pending 0..10, conformant 10..60
    h.taint(40, "b")  # tainted 40..90
    h.move(60, "a", "unknown")  # silent 60..70: not drift, but not conformant either
    h.move(70, "a", "conformant")
    h.move(90, "b", "retired")  # gone: counts for nothing after 90
    report = build_report(h.rows(), from_ms=20 * S, to_ms=100 * S)
    (web,) = report.groups
    # Period 20..100 s. a: conformant 20..60 and 70..100 (70 s), unknown 60..70 (10 s).
    # b: conformant 20..40 (20 s), tainted 40..90 (50 s).
    assert web.state_ms == {
        "conformant": 90 * S,
        "pending": 0,
        "replacing": 0,
        "tainted": 50 * S,
        "unknown": 10 * S,
    }
    assert web.share == pytest.approx(90 / 150)
    assert report.share == web.share
    assert report.instances == ("a", "b") and web.instances == 2


def test_instances_seen_are_those_that_existed_at_some_moment_of_the_period() -> None:
    h = History()
    h.move(0, "gone-before", "conformant")
    h.move(0, "retired-at-start", "conformant")
    h.move(0, "through", "conformant")
    h.move(10, "gone-before", "retired")  # retired before the period: not seen
    h.move(20, "retired-at-start", "retired")  # gone at the first moment: not seen
    h.move(50, "at-the-end", "pending")  # launched at the last moment: seen, no time
    h.move(60, "after", "pending")  # after the period: not read at all
    report = build_report(h.rows(), from_ms=20 * S, to_ms=50 * S)
    assert report.instances == ("at-the-end", "through")
    assert report.groups[0].state_ms["conformant"] == 30 * S
    assert report.coverage.last_seq == len(h.rows()) - 1  # the record after 50 s was not read


def test_taints_carry_evidence_reason_detector_and_the_replacement_that_followed() -> None:
    h = History()
    for name in ("a", "b", "c"):
        h.move(0, name, "conformant")
    h.taint(10, "a", paths=("/etc/passwd", "/usr/bin/caf%C3"), actor="agent:a")
    h.move(12, "a", "replacing")
    h.move(12, "a2", "pending", replaces="a")
    h.taint(20, "b", kind="manual", reason="<script>x</script>", actor="operator:bob")
    h.move(21, "b", "replacing")
    h.move(21, "b2", "pending", replaces="b")
    h.taint(30, "c", kind="image", actor="agent:c")  # never replaced
    h.move(40, "a2", "conformant")  # 30 s after the taint
    h.move(41, "a", "retired")
    h.move(120, "b2", "conformant")  # 100 s after the taint
    report = build_report(h.rows(), from_ms=0, to_ms=200 * S)
    a, b, c = report.taints
    assert (a.kind, a.source, a.actor) == ("file", "agent", "agent:a")
    assert a.evidence is not None and a.evidence.paths == ("/etc/passwd", "/usr/bin/caf%C3")
    assert a.evidence.modified == 2 and a.evidence.verified
    assert a.replacement is not None and a.replacement.instance_id == "a2"
    assert a.to_replacement_ms == 30 * S
    assert (b.kind, b.reason, b.actor, b.evidence) == (
        "manual",
        "<script>x</script>",
        "operator:bob",
        None,
    )
    assert b.to_replacement_ms == 100 * S
    assert c.replacement is None and c.to_replacement_ms is None
    assert report.taints_by_kind == {"file": 1, "image": 1, "manual": 1}
    assert report.manual_taints == (b,)
    assert report.taint_to_replacement() == (65 * S, 100 * S, 2)  # median of 30 s and 100 s
    assert [r.instance_id for r in report.replacements] == ["a2", "b2"]
    assert report.replaced_conformant == 2


def test_a_replacement_conformant_after_the_period_is_not_counted_as_done() -> None:
    h = History()
    h.move(0, "a", "conformant")
    h.taint(10, "a")
    h.move(11, "a2", "pending", replaces="a")
    h.move(90, "a2", "conformant")
    report = build_report(h.rows(), from_ms=0, to_ms=50 * S)
    (taint,) = report.taints
    assert taint.replacement is not None and taint.replacement.conformant_ms is None
    assert report.taint_to_replacement() == (None, None, 0)
    assert report.replaced_conformant == 0


def test_group_filter_keeps_only_that_groups_facts() -> None:
    h = History()
    h.move(0, "w", "conformant")
    h.move(0, "d", "conformant", group="db")
    h.taint(10, "d", group="db")
    h.log.append(
        ev.breaker_open("db", at_ms=11 * S, actor="controller", tainted=1, size=1, reason="all")
    )
    h.log.append(ev.rollout("web", at_ms=12 * S, actor="operator:c", from_image=V1, to_image=V2))
    whole = build_report(h.rows(), from_ms=0, to_ms=20 * S)
    web = build_report(h.rows(), from_ms=0, to_ms=20 * S, group="web")
    assert [g.group for g in whole.groups] == ["db", "web"]
    assert [g.group for g in web.groups] == ["web"] and web.share == 1.0
    assert web.taints == () and web.breaker == () and web.instances == ("w",)
    assert [c.kind for c in web.changes] == ["group.created", "group.rollout"]
    assert whole.breaker_openings == 1 and whole.breaker[0].tainted == 1
    assert whole.share == pytest.approx((20 + 10) / 40)


def test_images_list_runs_in_the_period_and_the_changes_that_named_them() -> None:
    h = History()
    h.move(0, "a", "conformant")
    h.move(0, "old", "conformant")
    h.move(5, "old", "retired")  # ran before the period only
    h.log.append(
        ev.image_registered(V2, at_ms=9 * S, actor="operator:b", digest="d2", manifest_digest="m2")
    )
    h.log.append(ev.rollout("web", at_ms=10 * S, actor="operator:c", from_image=V1, to_image=V2))
    h.move(15, "a", "conformant", image=V2)  # a now runs v2
    h.log.append(ev.rollback("web", at_ms=30 * S, actor="operator:c", from_image=V2, to_image=V1))
    report = build_report(h.rows(), from_ms=10 * S, to_ms=40 * S)
    v1, v2 = report.images
    assert (v1.image, v1.digest, v2.digest, v2.registered_by) == (V1, "d1", "d2", "operator:b")
    assert [(r.instance_id, r.from_ms, r.until_ms) for r in v1.runs] == [("a", 0, 15 * S)]
    assert [(r.instance_id, r.from_ms, r.until_ms) for r in v2.runs] == [("a", 15 * S, None)]
    assert [c.kind for c in v1.changes] == ["group.rollout", "group.rollback"]
    assert [c.kind for c in report.changes] == ["group.rollout", "group.rollback"]


def test_chart_buckets_hold_the_time_weighted_share_of_each_slice() -> None:
    h = History()
    h.move(0, "a", "conformant")
    h.move(0, "b", "conformant")
    h.taint(25, "b")  # slice 2 of 4 (20..30 s): b conformant half of it
    report = build_report(h.rows(), from_ms=0, to_ms=40 * S, buckets=4)
    assert report.groups[0].buckets == pytest.approx((1.0, 1.0, 0.75, 0.5))
    empty = build_report(h.rows()[:3], from_ms=0, to_ms=40 * S, buckets=4)
    assert empty.groups == () and empty.share is None


def test_a_log_pruned_to_a_checkpoint_starts_from_its_snapshot() -> None:
    h = History()
    h.move(0, "a", "conformant")
    h.move(0, "b", "pending")
    checkpoint = h.log.checkpoint(at_ms=10 * S, actor="operator:a")
    h.log.prune_before(checkpoint)
    h.move(20, "b", "conformant")
    report = build_report(h.rows(), from_ms=10 * S, to_ms=30 * S)
    assert report.coverage.complete and report.coverage.first_seq == checkpoint.seq
    assert report.groups[0].state_ms["conformant"] == 20 * S + 10 * S
    assert report.groups[0].state_ms["pending"] == 10 * S
    partial = build_report(h.rows()[1:], from_ms=10 * S, to_ms=30 * S)
    assert not partial.coverage.complete  # starts neither at seq 1 nor at a checkpoint


def test_period_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="end after it starts"):
        build_report([], from_ms=10, to_ms=10)


def test_the_chart_starts_at_the_first_record_when_the_period_starts_before_the_log() -> None:
    h = History()
    h.move(100, "a", "conformant")
    h.taint(150, "a")
    report = build_report(h.rows(), from_ms=0, to_ms=200 * S, buckets=4)
    assert report.from_ms == 0 and report.chart_from_ms == 0  # group.created at 0 is a record
    late = build_report(h.rows()[3:], from_ms=0, to_ms=200 * S, buckets=4)
    assert late.chart_from_ms == 100 * S
    assert late.groups[0].buckets == (1.0, 1.0, 0.0, 0.0)  # 100..125..150..175..200 s
    assert late.groups[0].state_ms["conformant"] == 50 * S


def test_a_row_of_no_known_kind_is_unreadable_not_skipped() -> None:
    h = History()
    h.move(1, "i-1", "conformant")
    rows = h.rows()
    rows.insert(2, (*rows[1][:2], "instance.teleported", *rows[1][3:]))
    with pytest.raises(AuditError, match=r"unknown kind 'instance\.teleported'"):
        build_report(rows, from_ms=0, to_ms=10 * S)
