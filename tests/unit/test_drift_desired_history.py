"""Image drift versus rollout: an instance on an image its group wanted before is rolled, not
tainted (``drift.decide`` with a group history)."""

from __future__ import annotations

from dataclasses import replace

from agent.manifest.report import Report
from controller.domain.drift import Outcome, decide
from controller.domain.model import DriftKind, Group, ImageRecord, InstanceState

V1 = ImageRecord(
    name="web",
    version="1",
    ref="web@sha256:" + "1" * 64,
    digest="sha256:" + "1" * 64,
    manifest_digest="sha256:" + "a" * 64,
    root=b"\x01" * 32,
    entry_count=3,
    byte_count=10,
)
V2 = replace(V1, version="2", ref="web@sha256:" + "2" * 64, digest="sha256:" + "2" * 64,
             root=b"\x02" * 32)  # fmt: skip
STRANGER = replace(V1, version="x", ref="web@sha256:" + "9" * 64, digest="sha256:" + "9" * 64)


def report(image: ImageRecord, root: bytes | None = None) -> Report:
    return Report(
        instance_id="i-1",
        group="web",
        image_ref=image.ref,
        image_digest=image.digest,
        root=image.root if root is None else root,
        seq=1,
        boot_id="b",
        scanned_at_ms=1,
    )


def run(group: Group, running: ImageRecord | None, rep: Report) -> tuple[Outcome, DriftKind | None]:
    decision = decide(None, group=group, desired=V2, running=running, report=rep, now=10.0)
    taint = decision.new_taint
    return decision.outcome, None if taint is None else taint.kind


ROLLED = Group(name="web", desired_image_ref=V2.ref, image_history=(V1.ref,), generation=1)


def test_previous_desired_image_after_a_rollout_is_conformant() -> None:
    decision = decide(None, group=ROLLED, desired=V2, running=V1, report=report(V1), now=10.0)
    assert decision.outcome is Outcome.ACCEPTED
    assert decision.instance.state is InstanceState.CONFORMANT


def test_image_left_behind_by_a_rollback_is_conformant_via_past_images() -> None:
    rolled_back = Group(
        name="web", desired_image_ref=V2.ref, image_history=(), past_images=(V1.ref,)
    )
    assert run(rolled_back, V1, report(V1)) == (Outcome.ACCEPTED, None)


def test_previous_image_with_changed_files_is_file_drift() -> None:
    assert run(ROLLED, V1, report(V1, root=b"\x07" * 32)) == (Outcome.DRIFT, DriftKind.FILE)


def test_registered_image_never_desired_is_still_image_drift() -> None:
    assert run(ROLLED, STRANGER, report(STRANGER)) == (Outcome.DRIFT, DriftKind.IMAGE)


def test_unregistered_digest_is_still_image_drift() -> None:
    assert run(ROLLED, None, report(STRANGER)) == (Outcome.DRIFT, DriftKind.IMAGE)


def test_without_history_the_previous_image_is_image_drift() -> None:
    fresh = Group(name="web", desired_image_ref=V2.ref)
    assert run(fresh, V1, report(V1)) == (Outcome.DRIFT, DriftKind.IMAGE)
