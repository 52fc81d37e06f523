"""Rescan only what the watch touched: each path's live entry, or its absence.

A touched path is examined exactly as a scan would record it (the scanner
itself runs, narrowed to that path), so the live root the watch keeps and the
root the next full scan computes agree bit for bit. A directory that is new to
the watch (created or moved in) is watched first and scanned second, so
nothing created inside it in between can slip past. A directory that vanished
or stopped being a directory takes everything known below it along.

Touched files are read again: any write, rename or chmod moves the file's
ctime, so the stat cache could never vouch for them anyway, and loading it
(over 100 bytes per file of the tree) would cost the long-lived agent more
memory than a few re-reads cost time.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterable

from agent.daemon.watch.inotify import Touch, TreeWatcher
from agent.manifest.format import Entry, EntryError, EntryType
from agent.manifest.policy import Policy
from agent.scan.entries import entry_from_stat
from agent.scan.rules import ignoring
from agent.scan.scanner import scan

KnownUnder = Callable[[bytes], Iterable[bytes]]
"""The paths the live state holds strictly below a directory."""


def rescan_touched(
    touches: Iterable[Touch],
    *,
    root: str,
    policy: Policy,
    watcher: TreeWatcher,
    known_under: KnownUnder,
) -> list[tuple[bytes, Entry | None]]:
    """The live entry (None: gone) of every touched path and of what changed below it."""
    base = os.fsencode(root).rstrip(b"/")
    strip = ignoring(policy)
    subtrees = {t.path for t in touches if t.subtree}
    paths = sorted({t.path for t in touches})
    results: dict[bytes, Entry | None] = {}
    present: list[tuple[bytes, os.stat_result]] = []
    # What vanished goes first, while the watches still say where it was: a directory
    # moved within the tree is dropped at its old path before its new path is watched.
    for path in paths:
        if policy.excludes(path):
            continue
        try:
            present.append((path, os.lstat(base + path)))
        except (FileNotFoundError, NotADirectoryError):
            _forget(path, watcher, known_under, results)
        except OSError:
            results[path] = Entry(path, EntryType.REGULAR, 0, 0, 0, error=EntryError.UNREADABLE)
    covered: bytes | None = None  # the last subtree scanned: paths below it are done
    for path, st in present:
        if covered is not None and path.startswith(covered):
            continue
        was_directory = watcher.knows_directory(path)
        if not stat.S_ISDIR(st.st_mode):
            if was_directory:
                _forget(path, watcher, known_under, results)
            results.update(_scan_path(root, policy, path))
            continue
        same_device = watcher.device_of(path) in (None, st.st_dev)
        if same_device and (path in subtrees or not was_directory):
            watcher.watch_tree(path)  # watch first, then scan
            found = _scan_path(root, policy, path)
            for gone in known_under(path):
                found.setdefault(gone, None)
            results.update(found)
            covered = path.rstrip(b"/") + b"/"
            continue
        entry = entry_from_stat(path, st)
        assert entry is not None  # a directory
        results[path] = entry if strip is None else strip(entry)
    return list(results.items())


def _forget(
    path: bytes,
    watcher: TreeWatcher,
    known_under: KnownUnder,
    results: dict[bytes, Entry | None],
) -> None:
    """``path`` is gone (or no longer a directory): so is everything known below it."""
    if watcher.knows_directory(path):
        watcher.unwatch_tree(path)
        for below in known_under(path):
            results[below] = None
    results[path] = None


def _scan_path(root: str, policy: Policy, path: bytes) -> dict[bytes, Entry | None]:
    """What a scan records at ``path`` and, for a directory, below it."""
    narrowed = dataclasses.replace(policy, include=(os.fsdecode(path),))
    entries = scan(root, narrowed, workers=0).entries
    return {entry.path: entry for entry in entries}
