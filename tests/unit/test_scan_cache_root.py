"""The stat cache's directory, symlink and root records: reused only while nothing changed."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.manifest.format import EntryType, root_of
from agent.manifest.policy import Policy
from agent.scan import statcache
from agent.scan.result import ScanResult
from agent.scan.scanner import scan
from agent.scan.statcache import StatCache

OPEN = Policy(exclude=())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for index in range(12):
        path = root / f"d{index % 3}" / f"f{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"content %d" % index)
    (root / "link").symlink_to("d0/f0")
    os.mkfifo(root / "fifo")
    return root


def primed(tree: Path) -> tuple[StatCache, ScanResult]:
    cache = StatCache(racy_window_ns=0)
    return cache, scan(tree, OPEN, cache=cache)


def rescan(tree: Path, cache: StatCache) -> ScanResult:
    """A rescan, checked against a scan without any cache."""
    result = scan(tree, OPEN, cache=cache)
    reference = scan(tree, OPEN)
    assert result.entries == reference.entries
    assert result.root == reference.root == root_of(result.entries)
    return result


def entry_of(result: ScanResult, path: bytes) -> tuple[object, ...]:
    return next(e for e in result.entries if e.path == path)


def test_an_unchanged_tree_gets_the_cached_root(tree: Path) -> None:
    cache, first = primed(tree)
    assert cache.root == first.root
    cache.root = b"\x07" * 32  # only a reused root could come out as this
    assert scan(tree, OPEN, cache=cache).root == b"\x07" * 32


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "d1" / "f1").write_bytes(b"other"),
        lambda root: (root / "d1" / "f1").unlink(),
        lambda root: (root / "d1" / "new").write_bytes(b""),
        lambda root: (root / "d2").chmod(0o700),
        lambda root: os.chown(root / "d2", 1234, 5678),
        lambda root: (root / "fifo").chmod(0o600),
        lambda root: (root / "link").unlink() or (root / "link").symlink_to("d1/f1"),
    ],
    ids=["content", "removed", "added", "directory-mode", "directory-owner", "fifo", "retarget"],
)
def test_any_change_recomputes_the_root(tree: Path, change: Callable[[Path], object]) -> None:
    cache, first = primed(tree)
    change(tree)
    result = rescan(tree, cache)
    assert result.root != first.root
    assert cache.root == result.root  # and the new root is cached for the next rescan


def test_a_removed_include_root_is_not_hidden_by_the_cached_root(tree: Path) -> None:
    cache, first = primed(tree)
    narrower = Policy(include=("/d0", "/d1"), exclude=())
    result = scan(tree, narrower, cache=cache)
    assert result.root == root_of(result.entries) != first.root


def test_a_symlink_target_comes_from_the_cache_while_its_stamp_holds(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, first = primed(tree)

    def no_readlink(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("readlink of an unchanged symlink")

    monkeypatch.setattr(os, "readlink", no_readlink)
    result = scan(tree, OPEN, cache=cache)
    link = entry_of(result, b"/link")
    assert link == entry_of(first, b"/link")
    assert link[7] == b"d0/f0"
    assert link[6] == hashlib.sha256(b"d0/f0").digest()


def test_objects_touched_within_the_racy_window_are_not_cached(tree: Path) -> None:
    cache = StatCache()  # default window: everything in the tree is too fresh to trust
    scan(tree, OPEN, cache=cache)
    assert len(cache) == 0
    assert cache.root is None


def test_a_partly_cached_scan_keeps_no_root(tree: Path) -> None:
    cache, _ = primed(tree)
    fresh = tree / "d0" / "fresh"
    fresh.write_bytes(b"just written")
    cache.racy_window_ns = 10**18  # this scan trusts nothing it sees changed
    result = scan(tree, OPEN, cache=cache)
    assert b"/d0/fresh" not in cache.records  # nor d0, whose mtime moved
    assert cache.root is None
    assert result.root == root_of(result.entries)
    assert rescan(tree, cache).files_hashed == 1


def test_store_forgets_the_root(tree: Path) -> None:
    cache, _ = primed(tree)
    cache.store(b"/d0/f0", (tree / "d0" / "f0").stat(), b"\x01" * 32)
    assert cache.root is None


def test_a_full_rehash_never_takes_the_cached_root(tree: Path) -> None:
    cache, first = primed(tree)
    cache.root = b"\x07" * 32
    result = scan(tree, OPEN, cache=cache, full_rehash=True)
    assert result.root == first.root
    assert cache.root == first.root


def test_an_ignoring_policy_never_takes_the_cached_root(tree: Path) -> None:
    ignoring = Policy(exclude=(), ignore_attributes=("mode",))
    cache = StatCache(racy_window_ns=0)
    scan(tree, ignoring, cache=cache)
    cache.root = b"\x07" * 32
    result = scan(tree, ignoring, cache=cache)
    assert result.root == root_of(result.entries)
    assert all(entry.mode == 0 for entry in result.entries)


def test_the_root_and_every_record_round_trip_through_a_file(tree: Path, tmp_path: Path) -> None:
    cache, first = primed(tree)
    path = tmp_path / "statcache"
    cache.save(path)
    loaded = StatCache.load(path, racy_window_ns=0)
    assert loaded == cache
    assert loaded.root == first.root
    kinds = {e.type for e in first.entries}
    assert kinds == {EntryType.REGULAR, EntryType.DIRECTORY, EntryType.SYMLINK, EntryType.FIFO}
    assert rescan(tree, loaded).files_hashed == 0


def _version_1(cache: StatCache) -> bytes:
    """``cache``'s regular files in the version 1 format (what older agents saved)."""
    signature = cache.leaf_signature.encode()
    files = {p: r for p, r in sorted(cache.records.items()) if len(r[0]) == 4}
    header = struct.pack("<16sIII", statcache.MAGIC, 1, len(files), len(signature))
    packed = [
        struct.pack("<QQqq32s32sI", *stamp, digest, leaf, len(path))
        for path, (stamp, digest, leaf) in files.items()
    ]
    body = b"".join([header, signature, *packed, *files])
    return body + hashlib.sha256(body).digest()


def test_a_version_1_cache_still_saves_the_hashing(tree: Path) -> None:
    cache, _ = primed(tree)
    loaded = StatCache.decode(_version_1(cache), racy_window_ns=0)
    assert loaded.root is None
    assert len(loaded) == 12
    result = rescan(tree, loaded)
    assert (result.files_hashed, result.files_cached) == (0, 12)
    assert loaded == cache  # the rescan filled in the rest
