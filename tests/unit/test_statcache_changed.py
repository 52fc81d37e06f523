"""The agent's scan process saves the stat cache only when a scan changed it.

A directory whose mtime moved hashes no file and keeps the entry count, yet its
record changed: the cache must still be saved, or every later scan misses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.manifest.policy import Policy
from agent.scan.scanner import scan
from agent.scan.statcache import StatCache

OPEN = Policy(exclude=())


def _tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("port = 80\n")
    (root / "bin").mkdir()
    (root / "bin" / "app").write_text("#!/bin/sh\n")


def test_only_a_scan_that_changed_the_records_marks_the_cache_changed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root)
    cache = StatCache(racy_window_ns=0)
    scan(root, OPEN, cache=cache, workers=0)
    assert cache.changed
    cache.save(tmp_path / "cache")
    assert not cache.changed

    scan(root, OPEN, cache=cache, workers=0)
    assert not cache.changed  # nothing moved: nothing to save

    st = os.stat(root / "etc")
    os.utime(root / "etc", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    result = scan(root, OPEN, cache=cache, workers=0)
    assert result.files_hashed == 0
    assert cache.changed  # the directory's record has a new stamp

    loaded = StatCache.load(tmp_path / "cache", racy_window_ns=0)
    assert not loaded.changed
