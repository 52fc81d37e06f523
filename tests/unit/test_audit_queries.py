"""Conformance at past moments of a scripted fleet history, answered from the log alone."""

from __future__ import annotations

import pytest

from controller.audit import events as ev
from controller.audit.memory import MemoryAuditLog
from controller.audit.queries import conformance_at, image_history, instance_history

V1 = "web@sha256:" + "1" * 64
V2 = "web@sha256:" + "2" * 64


def scripted_fleet() -> MemoryAuditLog:
    """t=10 two conformant on v1; t=20 i-b drifts; t=30 i-c replaces it; t=40 rollout to v2."""
    log = MemoryAuditLog()
    add = log.append
    add(ev.image_registered(V1, at_ms=1, actor="operator:alice", digest="d1", manifest_digest="m1"))
    add(ev.group_created("web", at_ms=2, actor="operator:alice", image=V1, mode="enforce"))
    for name in ("i-a", "i-b"):
        add(
            ev.instance_transition(
                name,
                at_ms=5,
                actor="controller",
                group="web",
                image=V1,
                from_state=None,
                to_state="pending",
            )
        )
    for name in ("i-a", "i-b"):
        add(
            ev.instance_transition(
                name,
                at_ms=10,
                actor=f"agent:{name}",
                group="web",
                image=V1,
                from_state="pending",
                to_state="conformant",
            )
        )
    add(
        ev.drift_evidence(
            "i-b",
            at_ms=20,
            actor="agent:i-b",
            group="web",
            image=V1,
            kind="file",
            modified=1,
            first_paths=["/etc/passwd"],
        )
    )
    add(
        ev.taint(
            "i-b",
            at_ms=20,
            actor="controller",
            group="web",
            image=V1,
            source="agent",
            drift_kind="file",
            reason="/etc/passwd modified",
        )
    )
    add(
        ev.instance_transition(
            "i-b",
            at_ms=20,
            actor="controller",
            group="web",
            image=V1,
            from_state="conformant",
            to_state="tainted",
        )
    )
    add(
        ev.replacement_step(
            at_ms=25,
            actor="controller",
            group="web",
            replacement_id="r1",
            idempotency_key="r1-k",
            phase="launching",
            old_instance="i-b",
            new_instance="i-c",
            image=V1,
        )
    )
    add(
        ev.instance_transition(
            "i-b",
            at_ms=25,
            actor="controller",
            group="web",
            image=V1,
            from_state="tainted",
            to_state="replacing",
        )
    )
    add(
        ev.instance_transition(
            "i-c",
            at_ms=26,
            actor="controller",
            group="web",
            image=V1,
            from_state=None,
            to_state="pending",
            replaces="i-b",
        )
    )
    add(
        ev.instance_transition(
            "i-c",
            at_ms=28,
            actor="agent:i-c",
            group="web",
            image=V1,
            from_state="pending",
            to_state="conformant",
        )
    )
    add(
        ev.instance_transition(
            "i-b",
            at_ms=30,
            actor="controller",
            group="web",
            image=V1,
            from_state="replacing",
            to_state="retired",
        )
    )
    add(
        ev.image_registered(V2, at_ms=35, actor="operator:carol", digest="d2", manifest_digest="m2")
    )
    add(ev.rollout("web", at_ms=40, actor="operator:carol", from_image=V1, to_image=V2))
    add(
        ev.breaker_open(
            "web", at_ms=41, actor="controller", tainted=2, size=2, reason="too many at once"
        )
    )
    add(ev.breaker_resume("web", at_ms=42, actor="operator:carol"))
    return log


@pytest.mark.parametrize(
    ("at_ms", "expected", "ratio"),
    [
        (4, {}, None),
        (5, {"i-a": "pending", "i-b": "pending"}, 0.0),
        (10, {"i-a": "conformant", "i-b": "conformant"}, 1.0),
        (22, {"i-a": "conformant", "i-b": "tainted"}, 0.5),
        (27, {"i-a": "conformant", "i-b": "replacing", "i-c": "pending"}, 1 / 3),
        (30, {"i-a": "conformant", "i-c": "conformant"}, 1.0),
        (1_000, {"i-a": "conformant", "i-c": "conformant"}, 1.0),
    ],
)
def test_conformance_at_past_moments(
    at_ms: int, expected: dict[str, str], ratio: float | None
) -> None:
    records = list(scripted_fleet().records())
    result = conformance_at(records, at_ms)
    assert {i.instance_id: i.state for i in result.instances} == expected
    assert result.ratio == ratio
    assert conformance_at(records, at_ms, group="other").instances == ()


def test_history_of_a_replaced_instance() -> None:
    history = instance_history(scripted_fleet().records(), "i-b")
    assert (history.launched_ms, history.retired_ms) == (5, 30)
    kinds = [str(r.event.kind) for r in history.records]
    assert kinds == [
        "instance.state",
        "instance.state",
        "instance.drift",
        "instance.taint",
        "instance.state",
        "replacement.step",
        "instance.state",
        "instance.state",  # i-c launched as its replacement
        "instance.state",
    ]
    assert history.records[2].event.data["first_paths"] == ["/etc/passwd"]


def test_history_of_the_replacement_names_what_it_replaced() -> None:
    history = instance_history(scripted_fleet().records(), "i-c")
    assert history.retired_ms is None
    assert history.records[0].event.instance_id == "i-b"  # the replacement step's old instance
    assert history.records[1].event.related_instance_id == "i-b"  # launched as its replacement


def test_images_say_who_registered_where_they_ran_and_when_desired() -> None:
    images = {i.image: i for i in image_history(scripted_fleet().records())}
    assert (images[V1].registered_by, images[V2].registered_by) == (
        "operator:alice",
        "operator:carol",
    )
    assert {(r.instance_id, r.from_ms, r.until_ms) for r in images[V1].runs} == {
        ("i-a", 5, None),
        ("i-b", 5, 30),
        ("i-c", 26, None),
    }
    assert [(d.group, d.from_ms, d.until_ms) for d in images[V1].desired] == [("web", 2, 40)]
    assert [(d.group, d.from_ms, d.until_ms, d.actor) for d in images[V2].desired] == [
        ("web", 40, None, "operator:carol")
    ]
    assert images[V2].runs == ()
