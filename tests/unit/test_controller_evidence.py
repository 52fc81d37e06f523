"""Drift evidence is checked against the registered manifest and the reported root."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.manifest.diff import Change, ChangeKind, diff
from agent.manifest.format import Entry, EntryType, root_of
from agent.manifest.report import Evidence
from controller.domain.evidence import ManifestIndex, check_evidence
from controller.errors import InvalidArgumentError


def regular(path: bytes, content: int, *, mode: int = 0o644) -> Entry:
    return Entry(path, EntryType.REGULAR, mode, 0, 0, 4, bytes([content]) * 32)


BASELINE = sorted(
    [
        Entry(b"/etc", EntryType.DIRECTORY, 0o755, 0, 0),
        regular(b"/etc/hostname", 1),
        regular(b"/etc/passwd", 2),
        regular(b"/usr/bin/tool", 3, mode=0o755),
    ]
)


@pytest.fixture
def index() -> ManifestIndex:
    return ManifestIndex(BASELINE)


def evidence_for(live: list[Entry]) -> tuple[Evidence, bytes]:
    """The changes an honest agent would send for ``live``, and the root it would report."""
    changes = tuple(diff(BASELINE, sorted(live)))
    return Evidence(changes=changes, total_changes=len(changes)), root_of(live)


def without(path: bytes) -> list[Entry]:
    return [e for e in BASELINE if e.path != path]


def test_index_root_is_the_manifest_root(index: ManifestIndex) -> None:
    assert index.root() == root_of(BASELINE)


class TestConsistent:
    @pytest.mark.parametrize(
        "live",
        [
            [*BASELINE, regular(b"/etc/cron.d/evil", 9)],
            without(b"/etc/passwd"),
            [*without(b"/etc/passwd"), regular(b"/etc/passwd", 7)],
            [*without(b"/usr/bin/tool"), regular(b"/usr/bin/tool", 3, mode=0o4755)],
        ],
        ids=["added", "removed", "modified-content", "modified-mode"],
    )
    def test_accepted_and_verified(self, index: ManifestIndex, live: list[Entry]) -> None:
        evidence, root = evidence_for(live)
        assert len(evidence.changes) == 1
        verdict = check_evidence(index, evidence, reported_root=root)
        assert verdict.verified and not verdict.truncated

    def test_the_index_is_left_as_it_was(self, index: ManifestIndex) -> None:
        evidence, root = evidence_for([*BASELINE, regular(b"/tmp/x", 5)])
        check_evidence(index, evidence, reported_root=root)
        assert index.root() == root_of(BASELINE)
        with pytest.raises(InvalidArgumentError):
            check_evidence(index, evidence, reported_root=b"\x00" * 32)
        assert index.root() == root_of(BASELINE)

    @settings(max_examples=60, deadline=None)
    @given(
        st.sets(st.sampled_from([e.path for e in BASELINE])),
        st.sets(st.sampled_from([e.path for e in BASELINE])),
        st.sets(st.binary(min_size=1, max_size=8).map(lambda b: b"/new/" + b.hex().encode())),
    )
    def test_any_honest_evidence_is_accepted(
        self, removed: set[bytes], modified: set[bytes], added: set[bytes]
    ) -> None:
        live = [
            regular(e.path, 99) if e.path in modified else e
            for e in BASELINE
            if e.path not in removed
        ]
        live += [regular(path, 42) for path in added]
        evidence, root = evidence_for(live)
        verdict = check_evidence(ManifestIndex(BASELINE), evidence, reported_root=root)
        assert verdict.verified


class TestInconsistent:
    def test_changes_that_do_not_hash_to_the_root(self, index: ManifestIndex) -> None:
        evidence, _ = evidence_for(without(b"/etc/passwd"))
        other_root = root_of(without(b"/etc/hostname"))
        with pytest.raises(InvalidArgumentError) as raised:
            check_evidence(index, evidence, reported_root=other_root)
        assert raised.value.reason == "evidence_inconsistent"
        assert "does not hash to the reported root" in str(raised.value)

    def test_hiding_a_change_is_caught(self, index: ManifestIndex) -> None:
        live = [*without(b"/etc/passwd"), regular(b"/etc/shadow", 8)]
        evidence, root = evidence_for(live)
        partial = Evidence(changes=evidence.changes[:1], total_changes=1)
        with pytest.raises(InvalidArgumentError):
            check_evidence(index, partial, reported_root=root)

    @pytest.mark.parametrize(
        ("change", "words"),
        [
            (Change(ChangeKind.ADDED, b"/etc/passwd", regular(b"/etc/passwd", 2)), "image has it"),
            (Change(ChangeKind.REMOVED, b"/nope", None), "image lacks it"),
            (Change(ChangeKind.MODIFIED, b"/nope", regular(b"/nope", 1)), "image lacks it"),
        ],
        ids=["added-but-present", "removed-but-absent", "modified-but-absent"],
    )
    def test_changes_that_do_not_fit_the_manifest(
        self, index: ManifestIndex, change: Change, words: str
    ) -> None:
        with pytest.raises(InvalidArgumentError) as raised:
            check_evidence(index, Evidence(changes=(change,)), reported_root=b"\x00" * 32)
        assert words in str(raised.value)

    def test_a_path_twice(self, index: ManifestIndex) -> None:
        change = Change(ChangeKind.REMOVED, b"/etc/passwd", None)
        with pytest.raises(InvalidArgumentError) as raised:
            check_evidence(
                index, Evidence(changes=(change, change), total_changes=2), reported_root=b""
            )
        assert "twice" in str(raised.value)


class TestTruncated:
    def test_checked_change_by_change_and_unverified(self, index: ManifestIndex) -> None:
        live = [*without(b"/etc/passwd"), regular(b"/a", 1), regular(b"/b", 2)]
        evidence, root = evidence_for(live)
        truncated = Evidence(changes=evidence.changes[:2], truncated=True, total_changes=3)
        verdict = check_evidence(index, truncated, reported_root=root)
        assert not verdict.verified and verdict.truncated

    def test_truncated_evidence_is_still_checked_per_change(self, index: ManifestIndex) -> None:
        bogus = Change(ChangeKind.REMOVED, b"/not/in/image", None)
        with pytest.raises(InvalidArgumentError):
            check_evidence(
                index,
                Evidence(changes=(bogus,), truncated=True, total_changes=10),
                reported_root=b"\x00" * 32,
            )

    def test_total_smaller_than_sent_is_refused(self, index: ManifestIndex) -> None:
        change = Change(ChangeKind.REMOVED, b"/etc/passwd", None)
        with pytest.raises(InvalidArgumentError):
            check_evidence(
                index,
                Evidence(changes=(change,), truncated=True, total_changes=0),
                reported_root=b"\x00" * 32,
            )


def test_the_evidence_wanted_follow_up_is_unverified_not_inconsistent(
    index: ManifestIndex,
) -> None:
    """No changes at all, complete, for a root the manifest does not have: the agent's
    baseline differs from the registered manifest (docs/api.md)."""
    verdict = check_evidence(index, Evidence(changes=()), reported_root=b"\x07" * 32)
    assert not verdict.verified and not verdict.truncated
    same = check_evidence(index, Evidence(changes=()), reported_root=root_of(BASELINE))
    assert same.verified


def test_inconsistent_evidence_names_paths_in_their_display_form(index: ManifestIndex) -> None:
    evidence = Evidence(changes=(Change(ChangeKind.REMOVED, b"/srv/\xffgone", None),))
    with pytest.raises(InvalidArgumentError, match="/srv/%FFgone") as raised:
        check_evidence(index, evidence, reported_root=b"\x07" * 32)
    assert "b'" not in str(raised.value)
