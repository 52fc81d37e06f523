"""diff: which entries were added, removed or modified, and exactly which attributes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.manifest.diff import Change, ChangeKind, changed_attributes, diff
from agent.manifest.format import Entry, EntryError, EntryType

FILE = Entry(b"/etc/app.conf", EntryType.REGULAR, 0o644, 0, 0, 5, b"a" * 32)
LINK = Entry(b"/etc/link", EntryType.SYMLINK, 0o777, 0, 0, 0, b"t" * 32, b"app.conf")
DEVICE = Entry(b"/dev/null", EntryType.CHAR_DEVICE, 0o666, 0, 0, rdev_major=1, rdev_minor=3)


@pytest.mark.parametrize(
    ("old", "new", "attributes"),
    [
        (FILE, FILE._replace(sha256=b"b" * 32), ("content",)),
        (FILE, FILE._replace(size=6, sha256=b"b" * 32), ("size", "content")),
        (FILE, FILE._replace(mode=0o600), ("mode",)),
        (FILE, FILE._replace(uid=1000), ("uid",)),
        (FILE, FILE._replace(gid=1000), ("gid",)),
        (FILE, FILE._replace(uid=1, gid=2, mode=0o4755), ("mode", "uid", "gid")),
        (FILE, FILE._replace(type=EntryType.DIRECTORY, size=0, sha256=b""), ("type",)),
        (
            FILE,
            LINK._replace(path=FILE.path),
            ("type", "mode"),  # a symlink's mode is always 0777
        ),
        (LINK, LINK._replace(link_target=b"other", sha256=b"o" * 32), ("target",)),
        (DEVICE, DEVICE._replace(rdev_minor=5), ("device",)),
        (FILE, FILE._replace(error=EntryError.UNREADABLE, sha256=b""), ("content", "readable")),
    ],
)
def test_changed_attributes_name_exactly_what_differs(
    old: Entry, new: Entry, attributes: tuple[str, ...]
) -> None:
    assert changed_attributes(old, new) == attributes
    assert diff([old], [new]) == [Change(ChangeKind.MODIFIED, old.path, new, attributes)]


def test_added_and_removed() -> None:
    a = FILE._replace(path=b"/a")
    b = FILE._replace(path=b"/b")
    c = FILE._replace(path=b"/c")
    assert diff([a, b], [b, c]) == [
        Change(ChangeKind.REMOVED, b"/a", None),
        Change(ChangeKind.ADDED, b"/c", c),
    ]
    assert diff([], [a]) == [Change(ChangeKind.ADDED, b"/a", a)]
    assert diff([a], []) == [Change(ChangeKind.REMOVED, b"/a", None)]
    assert diff([a, b], [a, b]) == []


entries = st.builds(
    Entry,
    path=st.binary(max_size=3).map(lambda name: b"/" + name),
    type=st.sampled_from([EntryType.REGULAR, EntryType.DIRECTORY, EntryType.SYMLINK]),
    mode=st.sampled_from([0o644, 0o755]),
    uid=st.integers(0, 2),
    gid=st.integers(0, 2),
    size=st.integers(0, 2),
    sha256=st.sampled_from([b"", b"a" * 32, b"b" * 32]),
)
trees = st.lists(entries, max_size=12, unique_by=lambda entry: entry.path).map(
    lambda items: sorted(items, key=lambda entry: entry.path)
)


def _apply(baseline: list[Entry], changes: list[Change]) -> list[Entry]:
    by_path = {entry.path: entry for entry in baseline}
    for change in changes:
        if change.kind is ChangeKind.REMOVED:
            del by_path[change.path]
        else:
            assert change.entry is not None
            by_path[change.path] = change.entry
    return sorted(by_path.values(), key=lambda entry: entry.path)


@settings(max_examples=80)
@given(trees, trees)
def test_changes_turn_baseline_into_live(baseline: list[Entry], live: list[Entry]) -> None:
    changes = diff(baseline, live)
    assert _apply(baseline, changes) == live
    assert [change.path for change in changes] == sorted({c.path for c in changes})
    for change in changes:
        if change.kind is ChangeKind.MODIFIED:
            assert change.attributes, "a modified entry names at least one attribute"
        else:
            assert change.attributes == ()


@given(trees)
def test_no_changes_against_itself(tree: list[Entry]) -> None:
    assert diff(tree, tree) == []
