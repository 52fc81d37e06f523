"""Watch mode at its limits: a full event queue, no watches left, bursts, a failed thread.

None of them may lose a change silently: an overflow rescans everything, a
directory the kernel cannot watch is counted, said once, and checked by every
interval's scan until it can be watched, a burst of thousands of changes
becomes a few coalesced reports whose last one counts every change, and a dead
event thread hands over to interval scans.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from inotify_simple import INotify

from agent.daemon.report import PendingReport
from agent.daemon.watch.inotify import TreeWatcher, WatchUnavailableError
from tests.fixtures.agent_watch import POLICY, WatchHarness

QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


@contextlib.contextmanager
def small_queue() -> Iterator[None]:
    """inotify instances created inside get a 16-event queue; the limit is restored at once.

    The limit is system-wide and read when an instance is created, so it is lowered
    only for as long as it takes to create the harness's own instance.
    """
    original = QUEUE_LIMIT.read_text()
    QUEUE_LIMIT.write_text("16\n")
    try:
        yield
    finally:
        QUEUE_LIMIT.write_text(original)


def test_a_queue_overflow_rewatches_and_rescans_everything(tmp_path: Path) -> None:
    with small_queue():
        harness = WatchHarness(tmp_path)  # its inotify instance has the small queue
    try:
        harness.watcher.watch_all()
        harness.mode.tick()  # the start-up scan, before the event thread reads anything
        fresh = harness.root / "srv" / "new"
        fresh.mkdir(parents=True)  # a new directory whose creation event is lost
        for index in range(200):
            (harness.root / "etc" / f"burst{index}").write_text("x\n")
        harness.mode.start(harness.jobs.put)
        harness.settle_on_truth()
        assert harness.metric("corral_agent_watch_full_rescans_total", reason="overflow") == 1
        # The lost directory was watched by the rescan: a write in it is an event again.
        scans = harness.scanner.scans
        (fresh / "later").write_text("later\n")
        harness.settle_on_truth()
        assert harness.scanner.scans == scans
    finally:
        harness.close()


def test_more_pending_paths_than_are_worth_examining_one_by_one_rescan_everything(
    tmp_path: Path,
) -> None:
    harness = WatchHarness(tmp_path, max_pending=50)
    harness.start()
    try:
        for index in range(120):
            (harness.root / "etc" / f"many{index}").write_text("x\n")
        harness.settle_on_truth()
        assert harness.metric("corral_agent_watch_full_rescans_total", reason="overflow") >= 1
        assert harness.last_evidence().total_changes == 120
    finally:
        harness.close()


class LimitedINotify(INotify):  # type: ignore[misc]  # inotify_simple has no type hints
    """An inotify instance that runs out of watches (ENOSPC) after ``budget`` of them."""

    budget = 5

    def add_watch(self, path: object, mask: int) -> int:
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        wd = int(super().add_watch(path, mask))
        self.budget -= 1
        return wd


def test_watch_exhaustion_is_said_once_counted_and_covered_by_interval_scans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    instances: list[LimitedINotify] = []

    def limited() -> LimitedINotify:
        instances.append(LimitedINotify())
        return instances[-1]

    harness = WatchHarness(tmp_path, inotify=limited)
    try:
        with caplog.at_level(logging.ERROR, logger="agent.daemon.watch.inotify"):
            harness.start()
        unwatched = harness.watcher.unwatched_directories()
        assert len(unwatched) == 4  # nine directories checked, five watches
        assert harness.metric("corral_agent_watch_unwatched_ratio") == pytest.approx(4 / 9)
        assert harness.metric("corral_agent_unwatched_directories") == 4
        said = [r for r in caplog.records if "watches exhausted" in r.getMessage()]
        assert len(said) == 1

        # A change in an unwatched directory is found by the next interval's scan.
        target = harness.root / unwatched[0].decode().lstrip("/") / "unseen"
        target.write_text("no event for this\n")
        scans = harness.scanner.scans
        harness.mode.tick()
        assert harness.scanner.scans == scans + 1
        harness.settle_on_truth()

        # Once watches are available again, the next tick watches what was missing.
        instances[0].budget = 100
        harness.mode.tick()
        assert harness.watcher.unwatched_directories() == []
        assert harness.metric("corral_agent_watch_unwatched_ratio") == 0
        scans = harness.scanner.scans
        (harness.root / unwatched[0].decode().lstrip("/") / "seen").write_text("event\n")
        harness.settle_on_truth()
        assert harness.scanner.scans == scans
    finally:
        harness.close()


def _drift_reports(sent: list[PendingReport]) -> list[PendingReport]:
    return [report for report in sent if report.evidence is not None]


def test_a_burst_of_thousands_of_changes_is_coalesced_with_bounded_evidence(
    tmp_path: Path,
) -> None:
    harness = WatchHarness(tmp_path, max_changes=100)
    harness.start()
    try:
        package = harness.root / "usr" / "lib" / "newpkg"
        package.mkdir()
        for index in range(1500):
            (package / f"module{index}.py").write_text(f"x = {index}\n")
        for index in range(5):
            (harness.root / "usr" / "lib" / "pkg" / f"mod{index}.py").write_text("patched\n")
        for index in range(1500):
            (harness.root / "etc" / f"conf{index}").write_text("y\n")
        harness.settle_on_truth()
        last = harness.last().evidence
        assert last is not None
        assert last.truncated and len(last.changes) == 100
        assert last.total_changes == 1 + 1500 + 5 + 1500  # nothing lost
        drift = _drift_reports(harness.transport.sent)
        assert 1 <= len(drift) <= 10  # coalesced: not one report per change
        assert harness.metric("corral_agent_watch_events_total") > harness.metric(
            "corral_agent_watch_rescanned_paths_total"
        )
        assert harness.scanner.scans == 1
    finally:
        harness.close()


def test_a_failed_event_thread_is_said_counted_and_handed_to_interval_scans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = WatchHarness(tmp_path)

    def broken(timeout: float | None) -> None:
        raise RuntimeError("descriptor gone")

    monkeypatch.setattr(harness.watcher, "read", broken)
    try:
        with caplog.at_level(logging.ERROR, logger="agent.daemon.watch.mode"):
            harness.start()
            assert harness.mode._thread is not None
            harness.mode._thread.join(timeout=10)
        assert any("watch thread failed" in r.getMessage() for r in caplog.records)
        assert harness.metric("corral_agent_errors_total", reason="watch_failed") == 1
        assert harness.metric("corral_agent_watch_active") == 0
        (harness.root / "etc" / "hostname").write_text("changed\n")
        scans = harness.scanner.scans
        harness.mode.tick()  # no events any more: every tick scans
        assert harness.scanner.scans == scans + 1
        assert harness.caught_up()
    finally:
        harness.close()


def test_no_inotify_means_watch_mode_is_unavailable(tmp_path: Path) -> None:
    def refused() -> INotify:
        raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(WatchUnavailableError, match="inotify is not available"):
        TreeWatcher(str(tmp_path), POLICY, inotify=refused)
