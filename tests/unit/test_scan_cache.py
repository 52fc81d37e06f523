"""The stat cache skips unchanged files, notices every change, and survives on disk."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.manifest.format import EntryType, encode_entry, root_of
from agent.manifest.policy import Policy
from agent.scan import scanner as scan_module
from agent.scan import statcache
from agent.scan.scanner import scan
from agent.scan.statcache import StatCache

OPEN = Policy(exclude=())


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for index in range(20):
        write(tmp_path / f"d{index % 3}/f{index}", b"content %d" % index)
    (tmp_path / "link").symlink_to("d0/f0")
    return tmp_path


def fresh_cache() -> StatCache:
    """A cache that trusts files written a moment ago (tests write, then scan at once)."""
    return StatCache(racy_window_ns=0)


def test_rescan_of_an_unchanged_tree_hashes_nothing(tree: Path) -> None:
    cache = fresh_cache()
    first = scan(tree, OPEN, cache=cache)
    second = scan(tree, OPEN, cache=cache)

    assert (first.files_hashed, first.files_cached) == (20, 0)
    assert (second.files_hashed, second.files_cached) == (0, 20)
    assert second.entries == first.entries
    assert second.root == first.root == root_of(second.entries)
    assert len(cache) == len(first.entries) == 25  # 20 files, 4 directories, 1 symlink


def test_same_size_and_mtime_but_new_ctime_is_rehashed(tree: Path) -> None:
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache)
    target = tree / "d1/f1"
    before = target.stat()
    target.write_bytes(b"CONTENT 1")  # same length
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back
    assert target.stat().st_ctime_ns != before.st_ctime_ns

    result = scan(tree, OPEN, cache=cache)

    assert result.files_hashed == 1
    changed = next(e for e in result.entries if e.path == b"/d1/f1")
    assert changed.sha256 == hashlib.sha256(b"CONTENT 1").digest()
    assert result.root == root_of(result.entries)


def test_full_rehash_ignores_the_cache(tree: Path) -> None:
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache)
    result = scan(tree, OPEN, cache=cache, full_rehash=True)
    assert (result.files_hashed, result.files_cached) == (20, 0)
    assert len(cache) == len(result.entries)


def test_files_touched_within_the_racy_window_are_not_cached(tree: Path) -> None:
    cache = StatCache()  # default window: files written just now are too fresh to trust
    scan(tree, OPEN, cache=cache)
    assert len(cache) == 0
    assert scan(tree, OPEN, cache=cache).files_hashed == 20


def test_deleted_files_leave_the_cache(tree: Path) -> None:
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache)
    (tree / "d2/f2").unlink()
    result = scan(tree, OPEN, cache=cache)
    assert len(cache) == len(result.entries) == 24
    assert cache.lookup(b"/d2/f2", (tree / "d0/f0").stat()) is None


def test_a_changed_policy_reuses_digests_but_not_leaves(tree: Path) -> None:
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache)
    ignoring = Policy(exclude=(), ignore_attributes=("mode",))

    result = scan(tree, ignoring, cache=cache)

    assert result.files_hashed == 0
    assert all(entry.mode == 0 for entry in result.entries)
    assert result.root == root_of(result.entries)
    again = scan(tree, ignoring, cache=cache)
    assert again.root == result.root


def test_a_cache_filled_by_store_is_used_by_the_scan(tree: Path) -> None:
    """Another component that already read a file (the artifact builder) can seed the cache."""
    cache = fresh_cache()
    target = tree / "d0/f0"
    cache.store(b"/d0/f0", target.stat(), b"\x01" * 32)
    result = scan(tree, OPEN, cache=cache)
    entry = next(e for e in result.entries if e.path == b"/d0/f0")
    assert entry.sha256 == b"\x01" * 32
    assert result.files_cached == 1
    assert result.root == root_of(result.entries)


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_results_do_not_depend_on_the_worker_count(
    tree: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_module, "BATCH_FILES", 3)  # many batches, many in flight
    reference = scan(tree, OPEN, workers=0)
    result = scan(tree, OPEN, workers=workers)
    assert result.entries == reference.entries
    assert result.root == reference.root
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache, workers=workers)
    assert scan(tree, OPEN, cache=cache, workers=workers).root == reference.root


def test_the_cache_round_trips_through_a_file(
    tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache)
    data_dir = tmp_path_factory.mktemp("state")
    path = data_dir / "statcache"
    cache.save(path)

    loaded = StatCache.load(path, racy_window_ns=0)

    assert loaded == cache
    result = scan(tree, OPEN, cache=loaded)
    assert (result.files_hashed, result.files_cached) == (0, 20)
    assert not (data_dir / "statcache.tmp").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],
        lambda data: data[:10],
        lambda data: b"",
        lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:],
        lambda data: b"not a cache at all, just some text" * 3,
    ],
    ids=["truncated-checksum", "truncated-header", "empty", "bit-flip", "foreign"],
)
def test_a_corrupt_cache_file_starts_empty_with_a_warning(
    tree: Path, tmp_path: Path, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    cache = fresh_cache()
    scan(tree, OPEN, cache=cache)
    path = tmp_path / "statcache"
    path.write_bytes(damage(cache.encode()))

    with caplog.at_level(logging.WARNING, logger="agent.scan.statcache"):
        loaded = StatCache.load(path)

    assert len(loaded) == 0
    assert "starting empty" in caplog.text


def test_another_format_version_is_not_trusted(tmp_path: Path) -> None:
    body = statcache._PREFIX.pack(statcache.MAGIC, statcache.VERSION + 1) + bytes(64)
    path = tmp_path / "statcache"
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(ValueError, match="format version"):
        StatCache.decode(path.read_bytes())
    assert len(StatCache.load(path)) == 0


def test_a_missing_cache_file_starts_empty(tmp_path: Path) -> None:
    assert len(StatCache.load(tmp_path / "absent")) == 0


def test_every_object_is_cached_and_only_files_by_their_content_stamp(tree: Path) -> None:
    cache = fresh_cache()
    result = scan(tree, OPEN, cache=cache)
    assert set(cache.records) == {e.path for e in result.entries}
    for entry in result.entries:
        stamp, content, leaf = cache.records[entry.path]
        assert leaf == hashlib.sha256(encode_entry(entry)).digest()
        if entry.type is EntryType.REGULAR:
            assert (len(stamp), content) == (4, entry.sha256)
        else:  # (ino, mode, uid, gid, mtime_ns, ctime_ns): never equal to a file's stamp
            assert (len(stamp), content) == (6, entry.link_target)
    assert cache.root == result.root
