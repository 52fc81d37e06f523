"""The live root: the baked manifest with changes applied hashes like a scan of the result.

Property-based: any baseline, any sequence of per-path updates (add, modify,
remove, revert), in any number of rounds. The live root must equal the root of
the entries it describes, and its evidence the diff of those entries against
the baseline, whatever the order of the updates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.daemon.report import bound_evidence
from agent.daemon.watch.liveroot import LiveRoot, TooManyChangesError
from agent.manifest.baseline import BaselineIndex
from agent.manifest.diff import diff
from agent.manifest.format import Entry, EntryType, Manifest, root_of
from agent.manifest.policy import Policy

NAMES = [b"/a", b"/a/b", b"/a/b/c", b"/a-x", b"/b", b"/b/\xff", b"/c", b"/c/d", b"/zz"]

entries = st.builds(
    lambda path, mode, size, digest: Entry(
        path, EntryType.REGULAR, mode, 0, 0, size, bytes([digest]) * 32
    ),
    st.sampled_from(NAMES),
    st.sampled_from([0o644, 0o755]),
    st.integers(0, 3),
    st.integers(0, 3),
)
updates = st.lists(st.tuples(st.sampled_from(NAMES), st.none() | entries), min_size=0, max_size=12)


def _write(tmp: Path, baseline: list[Entry]) -> BaselineIndex:
    path = tmp / "manifest.pb"
    path.write_bytes(Manifest.build(Policy(), baseline).encode())
    return BaselineIndex(str(path))


@settings(max_examples=150, deadline=None)
@given(
    baseline=st.lists(entries, unique_by=lambda e: e.path, max_size=len(NAMES)),
    rounds=st.lists(updates, min_size=1, max_size=3),
)
def test_the_live_root_is_the_root_of_the_live_entries(
    tmp_path_factory: pytest.TempPathFactory,
    baseline: list[Entry],
    rounds: list[list[tuple[bytes, Entry | None]]],
) -> None:
    index = _write(tmp_path_factory.mktemp("m"), baseline)
    try:
        live = LiveRoot(index)
        assert live.root() == root_of(baseline)
        current = {entry.path: entry for entry in baseline}
        for round_ in rounds:
            normalised = [
                (path, None if entry is None else entry._replace(path=path))
                for path, entry in round_
            ]
            live.apply(normalised)
            for path, entry in normalised:
                if entry is None:
                    current.pop(path, None)
                else:
                    current[path] = entry
            now = sorted(current.values())
            assert live.root() == root_of(now)
            changes = diff(sorted(baseline), now)
            expected = bound_evidence(changes, max_changes=100, max_bytes=1 << 20)
            assert live.evidence(max_changes=100, max_bytes=1 << 20) == (
                expected if changes else None
            )
            assert len(live) == len(changes)
    finally:
        index.close()


def test_baseline_lookups_and_subtrees(tmp_path: Path) -> None:
    baseline = [Entry(p, EntryType.DIRECTORY, 0o755, 0, 0) for p in NAMES]
    index = _write(tmp_path, baseline)
    try:
        assert len(index) == len(NAMES)
        found = index.lookup(b"/a/b")
        assert found is not None and found[0] == baseline[1]
        assert index.lookup(b"/a/bb") is None
        assert index.paths_under(b"/a") == [b"/a/b", b"/a/b/c"]  # not /a-x
        assert index.paths_under(b"/zz") == []
    finally:
        index.close()


def test_too_many_changes_hand_over(tmp_path: Path) -> None:
    index = _write(tmp_path, [])
    try:
        live = LiveRoot(index, max_tracked=2)
        added = [(p, Entry(p, EntryType.REGULAR, 0o644, 0, 0)) for p in NAMES[:3]]
        with pytest.raises(TooManyChangesError, match="more than 2 paths"):
            live.apply(added)
    finally:
        index.close()
