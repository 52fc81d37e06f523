"""Watch mode with real inotify: every kind of change is reported without a scan.

Each test changes a temporary tree under a watching agent and waits until the
agent's last report carries the root a fresh full scan computes; its evidence
must then be exactly the changes that scan finds against the baked manifest.
Only the start-up scan may run: everything after it comes from events.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.manifest.diff import ChangeKind
from tests.fixtures.agent_watch import WatchHarness


@pytest.fixture
def watching(tmp_path: Path) -> Iterator[WatchHarness]:
    harness = WatchHarness(tmp_path)
    harness.start()
    try:
        yield harness
    finally:
        harness.close()


def _write(root: Path) -> None:
    (root / "etc" / "hostname").write_text("web-2\n")


def _create(root: Path) -> None:
    (root / "etc" / "app" / "new.conf").write_text("added\n")


def _chmod(root: Path) -> None:
    os.chmod(root / "bin" / "tool", 0o4755)


def _chown(root: Path) -> None:
    os.chown(root / "etc" / "app" / "app.conf", 1234, 4321)


def _chmod_directory(root: Path) -> None:
    os.chmod(root / "usr" / "lib", 0o777)


def _rename(root: Path) -> None:
    os.rename(root / "usr" / "lib" / "pkg" / "mod1.py", root / "usr" / "lib" / "pkg" / "m.py")


def _rename_over(root: Path) -> None:
    (root / "etc" / ".hostname.tmp").write_text("swapped\n")
    os.replace(root / "etc" / ".hostname.tmp", root / "etc" / "hostname")


def _retarget(root: Path) -> None:
    link = root / "etc" / "app" / "current"
    link.unlink()
    link.symlink_to("/etc/hostname")


def _remove(root: Path) -> None:
    (root / "usr" / "lib" / "pkg" / "mod3.py").unlink()


def _remove_tree(root: Path) -> None:
    shutil.rmtree(root / "usr" / "lib" / "pkg")


def _deep_tree(root: Path) -> None:
    deep = root / "opt" / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / "payload").write_text("dropped\n")


def _file_to_directory(root: Path) -> None:
    (root / "bin" / "tool").unlink()
    (root / "bin" / "tool").mkdir()
    (root / "bin" / "tool" / "inside").write_text("x\n")


def _directory_to_file(root: Path) -> None:
    shutil.rmtree(root / "usr" / "lib" / "pkg" / "deep")
    (root / "usr" / "lib" / "pkg" / "deep").write_text("now a file\n")


CHANGES: dict[str, Callable[[Path], None]] = {
    "modify": _write,
    "create": _create,
    "chmod": _chmod,
    "chown": _chown,
    "chmod a directory": _chmod_directory,
    "rename": _rename,
    "rename over a file": _rename_over,
    "symlink retarget": _retarget,
    "remove": _remove,
    "remove a tree": _remove_tree,
    "new deep tree": _deep_tree,
    "file becomes a directory": _file_to_directory,
    "directory becomes a file": _directory_to_file,
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_is_reported_by_events_alone(
    watching: WatchHarness, change: Callable[[Path], None]
) -> None:
    assert watching.last().evidence is None  # the start-up scan: conformant
    change(watching.root)
    watching.settle_on_truth()
    assert watching.last().evidence is not None
    assert watching.scanner.scans == 1  # the start-up scan only


def test_a_new_deep_tree_is_watched_before_it_is_scanned(watching: WatchHarness) -> None:
    _deep_tree(watching.root)
    watching.settle_on_truth()
    # A later write deep inside proves every new directory got its watch.
    (watching.root / "opt" / "a" / "b" / "c" / "d" / "e" / "later").write_text("later\n")
    watching.settle_on_truth()
    paths = [change.path for change in watching.last_evidence().changes]
    assert b"/opt/a/b/c/d/e/later" in paths
    assert watching.scanner.scans == 1


@pytest.mark.parametrize("new_name", ["pkg2", "apkg"], ids=["sorts after", "sorts before"])
def test_a_directory_moved_within_the_tree_is_followed_at_its_new_path(
    watching: WatchHarness, new_name: str
) -> None:
    os.rename(watching.root / "usr" / "lib" / "pkg", watching.root / "usr" / new_name)
    watching.settle_on_truth()
    (watching.root / "usr" / new_name / "deep" / "data.bin").write_bytes(b"rewritten")
    watching.settle_on_truth()
    assert watching.scanner.scans == 1


def test_a_directory_moved_out_of_the_tree_is_removed_and_no_longer_watched(
    watching: WatchHarness, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    os.rename(watching.root / "usr" / "lib" / "pkg", outside)
    watching.settle_on_truth()
    removed = {c.path for c in watching.last_evidence().changes}
    assert b"/usr/lib/pkg/deep/data.bin" in removed
    reports = len(watching.transport.sent)
    (outside / "mod0.py").write_text("changed outside the root\n")
    _write(watching.root)  # a change inside, to know the first one was processed
    watching.settle_on_truth()
    assert len(watching.transport.sent) == reports + 1
    paths = {c.path for c in watching.last_evidence().changes}
    assert not any(p.startswith(b"/usr/lib/pkg/") and p in paths - removed for p in paths)


def test_reverting_a_change_reports_the_baseline_root_again(watching: WatchHarness) -> None:
    hostname = watching.root / "etc" / "hostname"
    original = hostname.read_bytes()
    _write(watching.root)
    watching.settle_on_truth()
    hostname.write_bytes(original)
    os.utime(hostname)  # content and attributes as baked: the entry is the baseline's
    watching.settle_on_truth()
    assert watching.last().header.root == watching.image.root
    assert watching.last().evidence is None


def test_changes_in_excluded_paths_are_not_watched_and_report_nothing(
    watching: WatchHarness,
) -> None:
    watched = watching.metric("corral_agent_watched_directories")
    directories = sum(1 for _ in watching.root.rglob("*") if _.is_dir()) + 1
    assert watched == directories - 1  # every directory but /var/log
    reports = len(watching.transport.sent)
    (watching.root / "var" / "log" / "app.log").write_text("mutable\n")
    _create(watching.root)  # a checked change after it, to know the first was processed
    watching.settle_on_truth()
    assert len(watching.transport.sent) == reports + 1
    paths = [c.path for c in watching.last_evidence().changes]
    assert paths == [b"/etc/app/new.conf"]
    assert watching.last_evidence().changes[0].kind is ChangeKind.ADDED


def test_a_heartbeat_between_scans_reports_the_live_root_without_scanning(
    watching: WatchHarness,
) -> None:
    _write(watching.root)
    watching.settle_on_truth()
    reports = len(watching.transport.sent)
    watching.mode.tick()
    assert len(watching.transport.sent) == reports + 1
    assert watching.last().header.root == watching.truth()[0]
    assert watching.last().evidence == watching.truth()[1]
    assert watching.scanner.scans == 1


def _mount(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def test_writes_through_a_bind_mount_and_from_another_mount_namespace_are_seen(
    watching: WatchHarness, tmp_path: Path
) -> None:
    etc = watching.root / "etc"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _mount("mount", "--bind", str(etc), str(elsewhere))
    try:
        (elsewhere / "hostname").write_text("written through a bind mount\n")
        watching.settle_on_truth()
    finally:
        _mount("umount", str(elsewhere))
    inside = tmp_path / "inside"
    inside.mkdir()
    script = f"mount --bind {etc} {inside} && echo namespaced > {inside}/motd"
    _mount("unshare", "--mount", "sh", "-c", script)  # a private namespace, gone after
    watching.settle_on_truth()
    paths = [c.path for c in watching.last_evidence().changes]
    assert paths == [b"/etc/hostname", b"/etc/motd"]
    assert watching.scanner.scans == 1


def test_a_filesystem_mounted_over_a_watched_directory_is_found_by_the_scan(
    tmp_path: Path,
) -> None:
    harness = WatchHarness(tmp_path, scan_interval=0)  # every tick is a safety-net scan
    harness.start()
    covered = harness.root / "usr" / "lib" / "pkg"
    _mount("mount", "-t", "tmpfs", "-o", "mode=0700", "corral-test", str(covered))
    try:
        (covered / "planted").write_text("inside the new mount\n")
        reports = len(harness.transport.sent)
        assert not harness.settle(lambda: len(harness.transport.sent) > reports, timeout=1.0)
        harness.mode.tick()  # the scan sees the mount point, mode 0700 now
        assert harness.caught_up() and harness.last().evidence is not None
        changes = {c.path: c for c in harness.last_evidence().changes}
        # one_filesystem: the mount point is recorded, not entered, so what it hides is gone.
        assert changes[b"/usr/lib/pkg"].kind is ChangeKind.MODIFIED
        assert changes[b"/usr/lib/pkg/mod0.py"].kind is ChangeKind.REMOVED
        assert b"/usr/lib/pkg/planted" not in changes
    finally:
        harness.close()
        _mount("umount", str(covered))
