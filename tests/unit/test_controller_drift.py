"""``drift.decide``: what one report means, for every kind of report, without a server."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryType
from agent.manifest.report import Evidence, Report
from controller.domain.drift import (
    Decision,
    Outcome,
    attach_evidence,
    decide,
    mark_suspicious,
)
from controller.domain.model import DriftKind, Group, ImageRecord, Instance, InstanceState, Taint
from controller.errors import AlreadyExistsError, ControllerError, FailedPreconditionError

S = InstanceState
ROOT = b"\x11" * 32
OTHER_ROOT = b"\x22" * 32
DESIRED = ImageRecord(
    name="web",
    version="1",
    ref="web@sha256:aa",
    digest="sha256:aa",
    manifest_digest="sha256:aa",
    root=ROOT,
    entry_count=3,
    byte_count=13,
)
OLD = replace(DESIRED, version="0", ref="web@sha256:bb", digest="sha256:bb", root=OTHER_ROOT)
GROUP = Group(name="web", desired_image_ref=DESIRED.ref, desired_image_digest=DESIRED.digest)
NOW = 1_000.0


def report(**fields: object) -> Report:
    values: dict[str, object] = {
        "instance_id": "i-1",
        "group": "web",
        "image_ref": DESIRED.ref,
        "image_digest": DESIRED.digest,
        "root": ROOT,
        "seq": 1,
        "boot_id": "boot-1",
        "scanned_at_ms": 1_000,
    }
    values.update(fields)
    if "image_digest" in fields and "image_ref" not in fields:  # the ref that names the digest
        digest = str(fields["image_digest"])
        values["image_ref"] = {DESIRED.digest: DESIRED.ref, OLD.digest: OLD.ref}.get(digest, digest)
    return Report(**values)  # type: ignore[arg-type]


def run(
    instance: Instance | None,
    rep: Report,
    *,
    running: ImageRecord | None = DESIRED,
    group: Group | None = GROUP,
    desired: ImageRecord | None = DESIRED,
    now: float = NOW,
) -> Decision:
    return decide(instance, group=group, desired=desired, running=running, report=rep, now=now)


def stored(state: InstanceState = S.CONFORMANT, **fields: object) -> Instance:
    """The instance as it is after report seq 5 of boot-1."""
    values: dict[str, object] = {
        "id": "i-1",
        "group": "web",
        "state": state,
        "image_ref": DESIRED.ref,
        "image_digest": DESIRED.digest,
        "root": ROOT,
        "first_seen": 500.0,
        "last_report": 900.0,
        "seq": 5,
        "boot_id": "boot-1",
        "scanned_at_ms": 5_000,
    }
    values.update(fields)
    return Instance(**values)  # type: ignore[arg-type]


class TestAccepted:
    def test_first_good_report_creates_a_conformant_instance_durably(self) -> None:
        decision = run(None, report())
        assert decision.outcome == Outcome.ACCEPTED
        assert decision.instance.state == S.CONFORMANT
        assert decision.instance.first_seen == NOW == decision.instance.last_report
        assert decision.durable and decision.new_taint is None
        assert not decision.evidence_wanted

    def test_steady_heartbeat_may_be_written_behind(self) -> None:
        decision = run(stored(), report(seq=6, scanned_at_ms=6_000))
        assert decision.outcome == Outcome.ACCEPTED
        assert decision.instance.seq == 6 and decision.instance.last_report == NOW
        assert decision.instance.state == S.CONFORMANT
        assert not decision.durable

    def test_unknown_comes_back_durably(self) -> None:
        decision = run(stored(S.UNKNOWN), report(seq=6, scanned_at_ms=6_000))
        assert decision.instance.state == S.CONFORMANT
        assert decision.durable

    def test_new_boot_restarts_the_sequence(self) -> None:
        decision = run(stored(), report(seq=1, boot_id="boot-2", scanned_at_ms=9_000))
        assert decision.outcome == Outcome.ACCEPTED
        assert decision.instance.boot_id == "boot-2" and decision.instance.seq == 1

    def test_a_restored_file_does_not_clear_a_taint(self) -> None:
        taint = Taint(kind=DriftKind.FILE, reason="files differ", actor="agent", at=800.0)
        decision = run(stored(S.TAINTED, taint=taint), report(seq=6, scanned_at_ms=6_000))
        assert decision.instance.state == S.TAINTED
        assert decision.instance.taint == taint
        assert not decision.durable


class TestDrift:
    def test_unregistered_digest_is_image_drift(self) -> None:
        decision = run(None, report(image_digest="sha256:ff"), running=None)
        assert decision.outcome == Outcome.DRIFT
        assert decision.instance.state == S.TAINTED
        assert decision.new_taint is not None
        assert decision.new_taint.kind == DriftKind.IMAGE
        assert "sha256:ff" in decision.new_taint.reason
        assert decision.durable and not decision.evidence_wanted

    def test_registered_but_not_desired_digest_is_image_drift(self) -> None:
        decision = run(
            stored(), report(seq=6, image_digest=OLD.digest, root=OTHER_ROOT), running=OLD
        )
        assert decision.new_taint is not None and decision.new_taint.kind == DriftKind.IMAGE
        assert OLD.ref in decision.new_taint.reason and DESIRED.ref in decision.new_taint.reason
        assert decision.instance.state == S.TAINTED and decision.durable

    def test_root_mismatch_is_file_drift_and_asks_for_evidence(self) -> None:
        decision = run(stored(), report(seq=6, root=OTHER_ROOT))
        assert decision.outcome == Outcome.DRIFT
        assert decision.new_taint is not None and decision.new_taint.kind == DriftKind.FILE
        assert decision.new_taint.actor == "agent:i-1" and decision.new_taint.at == NOW
        assert decision.instance.state == S.TAINTED and decision.instance.root == OTHER_ROOT
        assert decision.durable and decision.evidence_wanted

    def test_drift_on_an_already_tainted_instance_is_not_a_new_taint(self) -> None:
        first = run(stored(), report(seq=6, root=OTHER_ROOT)).instance
        again = run(first, report(seq=7, root=OTHER_ROOT, scanned_at_ms=7_000))
        assert again.outcome == Outcome.DRIFT and again.new_taint is None
        assert again.instance.taint == first.taint and not again.durable
        assert again.evidence_wanted  # still no evidence on file

    def test_evidence_no_longer_wanted_once_recorded(self) -> None:
        first = run(stored(), report(seq=6, root=OTHER_ROOT)).instance
        change = Change(ChangeKind.REMOVED, b"/etc/passwd", None)
        with_evidence = attach_evidence(first, Evidence(changes=(change,)), verified=True)
        again = run(with_evidence, report(seq=7, root=OTHER_ROOT, scanned_at_ms=7_000))
        assert not again.evidence_wanted


class TestDuplicatesAndOrder:
    def test_duplicate_seq_is_idempotent(self) -> None:
        before = stored()
        decision = run(before, report(seq=5, scanned_at_ms=5_000))
        assert decision.outcome == Outcome.DUPLICATE
        assert decision.instance is before and not decision.durable

    def test_duplicate_of_a_drifted_report_asks_for_evidence_again(self) -> None:
        tainted = run(stored(), report(seq=6, root=OTHER_ROOT)).instance
        decision = run(tainted, report(seq=6, root=OTHER_ROOT))
        assert decision.outcome == Outcome.DUPLICATE and decision.evidence_wanted

    @pytest.mark.parametrize(
        "change", [{"root": OTHER_ROOT}, {"image_digest": OLD.digest}], ids=["root", "digest"]
    )
    def test_same_seq_different_content_conflicts(self, change: dict[str, object]) -> None:
        with pytest.raises(AlreadyExistsError) as raised:
            run(stored(), report(seq=5, **change))
        assert raised.value.reason == "conflict"

    def test_older_seq_is_stale(self) -> None:
        with pytest.raises(FailedPreconditionError) as raised:
            run(stored(), report(seq=4))
        assert raised.value.reason == "stale"

    def test_new_boot_scanned_before_the_latest_report_is_stale(self) -> None:
        with pytest.raises(FailedPreconditionError) as raised:
            run(stored(), report(seq=9, boot_id="boot-0", scanned_at_ms=4_000))
        assert raised.value.reason == "stale"


class TestRefused:
    def test_undeclared_group(self) -> None:
        with pytest.raises(FailedPreconditionError) as raised:
            run(None, report(group="db"), group=None)
        assert raised.value.reason == "undeclared_group"
        assert "corral group create db" in str(raised.value)

    def test_retired_instance(self) -> None:
        with pytest.raises(FailedPreconditionError) as raised:
            run(stored(S.RETIRED), report(seq=6))
        assert raised.value.reason == "retired"

    def test_instance_moving_to_another_group(self) -> None:
        other = replace(GROUP, name="db")
        with pytest.raises(FailedPreconditionError) as raised:
            run(stored(), report(seq=6, group="db"), group=other)
        assert raised.value.reason == "group_mismatch"

    def test_desired_image_not_registered(self) -> None:
        with pytest.raises(FailedPreconditionError) as raised:
            run(None, report(), desired=None)
        assert raised.value.reason == "desired_unregistered"


class TestEvidenceBookkeeping:
    def test_first_evidence_is_kept(self) -> None:
        tainted = run(stored(), report(seq=6, root=OTHER_ROOT)).instance
        first = Evidence(changes=(Change(ChangeKind.REMOVED, b"/a", None),))
        second = Evidence(changes=(Change(ChangeKind.REMOVED, b"/b", None),))
        once = attach_evidence(tainted, first, verified=True)
        twice = attach_evidence(once, second, verified=True)
        assert twice.taint is not None and twice.taint.changes == first.changes

    def test_evidence_is_not_attached_to_image_or_manual_taints(self) -> None:
        image = run(None, report(image_digest="sha256:ff"), running=None).instance
        entry = Entry(b"/a", EntryType.REGULAR, 0o644, 0, 0, 1, b"\x00" * 32)
        evidence = Evidence(changes=(Change(ChangeKind.ADDED, b"/a", entry),))
        assert attach_evidence(image, evidence, verified=True) is image

    def test_mark_suspicious_once(self) -> None:
        flagged = mark_suspicious(stored())
        assert flagged.suspicious and mark_suspicious(flagged) is flagged


# A random stream of reports, good and bad, for one instance.
reports = st.builds(
    report,
    seq=st.integers(min_value=0, max_value=8),
    boot_id=st.sampled_from(["boot-1", "boot-2"]),
    scanned_at_ms=st.integers(min_value=0, max_value=10_000),
    root=st.sampled_from([ROOT, OTHER_ROOT]),
    image_digest=st.sampled_from([DESIRED.digest, OLD.digest, "sha256:ff"]),
)
RUNNING = {DESIRED.digest: DESIRED, OLD.digest: OLD}


@settings(max_examples=300)
@given(st.lists(reports, max_size=25))
def test_report_streams_keep_the_promises(stream: list[Report]) -> None:
    current: Instance | None = None
    ever_tainted = False
    for now, rep in enumerate(stream, start=1):
        try:
            decision = run(current, rep, running=RUNNING.get(rep.image_digest), now=float(now))
        except ControllerError:
            continue  # a refused report changes nothing: `current` is kept as it was
        if current is not None and decision.outcome != Outcome.DUPLICATE:
            assert decision.instance.seq == rep.seq
            assert (rep.boot_id, rep.seq) != (current.boot_id, current.seq)
        if current is None or decision.instance.state != current.state:
            assert decision.durable
        current = decision.instance
        ever_tainted = ever_tainted or current.state == S.TAINTED
        if ever_tainted:
            assert current.state == S.TAINTED and current.taint is not None
        drifted = rep.image_digest != DESIRED.digest or rep.root != ROOT
        if drifted and decision.outcome != Outcome.DUPLICATE:
            assert current.state == S.TAINTED
