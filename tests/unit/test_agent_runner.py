"""The runner's loop on a fake transport and a fake clock: what gets reported, when."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.daemon.backoff import Backoff
from agent.daemon.identity import read_image_json
from agent.daemon.metrics import AgentMetrics
from agent.daemon.outbox import Outbox
from agent.daemon.outbox_file import OutboxFile
from agent.daemon.report import Delivery, InstanceState, PendingReport
from agent.daemon.runner import Limits, Runner, Schedule, Subject, full_rehash_due
from agent.daemon.scanjob import InProcessScanner, ScanOutcome, ScanRequest
from agent.daemon.sequence import SequenceNumbers
from agent.errors import ReportRejectedError, RetryableError
from agent.image.bake import bake
from agent.manifest.diff import ChangeKind
from agent.manifest.policy import Policy
from agent.manifest.report import Footprint
from agent.scan.statcache import StatCache
from tests.fixtures.clock import FakeClock

POLICY = Policy(include=("/",), exclude=("/var/log",))


def make_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("web-1\n")
    (root / "etc" / "motd").write_text("hello\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(100))
    (root / "var" / "log").mkdir(parents=True)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[PendingReport] = []
        self.down = False
        self.failing_code = "UNAVAILABLE"
        self.evidence_wanted = False
        self.reject: set[int] = set()
        self.attempts = 0
        self.closed = False
        self.on_deliver: list[Any] = []

    def deliver(self, report: PendingReport) -> Delivery:
        self.attempts += 1
        for hook in self.on_deliver:
            hook(report)
        if self.down:
            code = self.failing_code
            raise RetryableError(f"controller 127.0.0.1:1: {code}", delay=0.0, code=code)
        if report.header.seq in self.reject:
            raise ReportRejectedError("bad report", code="INVALID_ARGUMENT")
        self.sent.append(report)
        return Delivery(
            state=InstanceState.CONFORMANT,
            evidence_wanted=self.evidence_wanted and not report.is_drift,
        )

    def close(self) -> None:
        self.closed = True


class SpyScanner(InProcessScanner):
    """Scans in-process and records whether each scan was a full rehash."""

    def __init__(self, scans: list[bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scans = scans

    def run(self, request: ScanRequest) -> ScanOutcome:
        self.scans.append(request.full_rehash)
        return super().run(request)


class Harness:
    def __init__(self, tmp_path: Path, *, durable: bool = False, **limits: int) -> None:
        self.root = tmp_path / "root"
        if not self.root.exists():
            make_tree(self.root)
        baked = bake(str(self.root), str(tmp_path / "image"), policy=POLICY, name="demo")
        self.image = read_image_json(baked.image_path)
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        self.outbox_file = OutboxFile(str(self.state)) if durable else None
        self.clock = FakeClock()
        self.transport = FakeTransport()
        self.registry = CollectorRegistry()
        self.scans: list[bool] = []
        self.scanner = SpyScanner(
            self.scans,
            cache=StatCache(racy_window_ns=0),
            cache_path=str(self.state / "statcache"),
            clock=self.clock,
            sleep=self.clock.sleep,
        )

        self.runner = Runner(
            subject=Subject(
                instance_id="i-0123456789abcdef0",
                group="web",
                boot_id="8a7c0f64-3d2e-4a53-9e0b-1f2a3b4c5d6e",
                agent_version="0.1.0",
                image=self.image,
                root=str(self.root),
                manifest_path=str(tmp_path / "image" / "manifest.pb"),
            ),
            schedule=Schedule(interval=30, jitter=3, full_rehash_every=3),
            limits=Limits(**limits),
            scanner=self.scanner,
            transport=self.transport,
            outbox=Outbox(capacity=8, file=self.outbox_file),
            sequence=SequenceNumbers(
                boot_id="8a7c0f64", data_dir=str(self.state), clock=self.clock
            ),
            backoff=Backoff(base=1, cap=60, random=lambda: 1.0, clock=self.clock),
            metrics=AgentMetrics(self.registry),
            footprint=lambda: Footprint(rss_bytes=40 << 20, cpu_millis=1234),
            clock=self.clock,
            monotonic=self.clock,
            sleep=self.clock.sleep,
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_conformant_root_sends_a_header_only_report(harness: Harness) -> None:
    assert harness.runner.tick() is None
    [report] = harness.transport.sent
    assert report.evidence is None
    header = report.header
    assert header.root == harness.image.root
    assert header.image_digest == harness.image.image_digest
    assert header.footprint == Footprint(rss_bytes=40 << 20, cpu_millis=1234)
    assert header.scanned_at_ms == int(harness.clock() * 1000)
    assert harness.metric("corral_agent_drift") == 0
    assert harness.metric("corral_agent_reports_total", result="delivered") == 1


def test_drift_sends_exactly_the_changed_paths(harness: Harness) -> None:
    (harness.root / "etc" / "motd").write_text("owned\n")
    (harness.root / "bin" / "backdoor").write_text("#!/bin/sh\n")
    (harness.root / "etc" / "hostname").unlink()
    (harness.root / "var" / "log" / "syslog").write_text("mutable, never drift\n")
    harness.runner.tick()
    [report] = harness.transport.sent
    assert report.evidence is not None
    changes = {change.path: change for change in report.evidence.changes}
    assert set(changes) == {b"/etc/motd", b"/bin/backdoor", b"/etc/hostname"}
    assert changes[b"/etc/motd"].kind is ChangeKind.MODIFIED
    assert "content" in changes[b"/etc/motd"].attributes
    assert changes[b"/bin/backdoor"].kind is ChangeKind.ADDED
    assert changes[b"/etc/hostname"].kind is ChangeKind.REMOVED
    assert report.evidence.total_changes == 3 and not report.evidence.truncated
    assert report.header.root != harness.image.root
    assert harness.metric("corral_agent_drift") == 1


def test_evidence_is_bounded_and_says_it_was_truncated(tmp_path: Path) -> None:
    harness = Harness(tmp_path, max_changes=2)
    for index in range(5):
        (harness.root / "etc" / f"added-{index}").write_text("x")
    harness.runner.tick()
    [report] = harness.transport.sent
    assert report.evidence is not None
    assert [c.path for c in report.evidence.changes] == [b"/etc/added-0", b"/etc/added-1"]
    assert report.evidence.truncated and report.evidence.total_changes == 5


def test_evidence_wanted_is_answered_with_a_drift_report_for_the_same_root(
    harness: Harness,
) -> None:
    harness.transport.evidence_wanted = True
    harness.runner.tick()
    plain, drift = harness.transport.sent
    assert plain.evidence is None and drift.evidence is not None
    assert drift.header.root == plain.header.root
    assert drift.header.seq > plain.header.seq
    assert drift.evidence.changes == () and drift.evidence.total_changes == 0


def test_reports_are_buffered_while_the_controller_is_down_and_delivered_in_order(
    harness: Harness,
) -> None:
    harness.transport.down = True
    delays = []
    for _ in range(3):
        delays.append(harness.runner.tick())
        harness.clock.advance(30)
    assert harness.transport.sent == []
    assert len(harness.runner.outbox) == 3
    assert delays[0] == 1.0  # random=1.0: the full first ceiling
    assert harness.metric("corral_agent_buffered_reports") == 3
    assert harness.metric("corral_agent_reports_total", result="buffered") == 3
    harness.transport.down = False
    assert harness.runner.flush() is None
    seqs = [report.header.seq for report in harness.transport.sent]
    assert len(seqs) == 3 and seqs == sorted(seqs) and len(set(seqs)) == 3
    assert len(harness.runner.outbox) == 0
    assert harness.metric("corral_agent_reports_total", result="delivered") == 3
    assert harness.metric("corral_agent_buffered_reports") == 0


def test_delivery_waits_for_the_backoff(harness: Harness) -> None:
    harness.transport.down = True
    delay = harness.runner.tick()
    assert delay == 1.0
    attempts = harness.transport.attempts
    harness.transport.down = False
    harness.clock.advance(0.5)
    harness.runner.flush()  # too early: not even attempted
    assert harness.transport.attempts == attempts
    harness.clock.advance(0.5)
    harness.runner.flush()
    assert len(harness.transport.sent) == 1


def test_a_refused_report_is_dropped_and_counted_and_the_next_one_goes_out(
    harness: Harness,
) -> None:
    harness.transport.down = True
    harness.runner.tick()
    harness.clock.advance(30)
    harness.runner.tick()
    first, second = harness.runner.outbox.items()
    harness.transport.down = False
    harness.transport.reject = {first.header.seq}
    harness.clock.advance(30)  # past the backoff
    harness.runner.flush()
    assert [r.header.seq for r in harness.transport.sent] == [second.header.seq]
    assert harness.metric("corral_agent_reports_total", result="rejected") == 1


def test_full_rehash_every_third_scan_and_the_cache_otherwise(harness: Harness) -> None:
    for _ in range(4):
        harness.runner.tick()
        harness.clock.advance(30)
    assert harness.scans == [True, False, False, True]
    assert harness.metric("corral_agent_files_hashed_total") == 3 * 2  # 3 files, 2 full scans


def test_full_rehash_due_by_count_or_by_time() -> None:
    by_count = Schedule(interval=30, jitter=0, full_rehash_every=2)
    by_time = Schedule(interval=30, jitter=0, full_rehash_interval=3600)
    assert full_rehash_due(by_count, scans_since_full=None, seconds_since_full=None)
    assert not full_rehash_due(by_count, scans_since_full=0, seconds_since_full=1e9)
    assert full_rehash_due(by_count, scans_since_full=1, seconds_since_full=0)
    assert not full_rehash_due(by_time, scans_since_full=99, seconds_since_full=3599)
    assert full_rehash_due(by_time, scans_since_full=0, seconds_since_full=3600)


def test_a_restarted_runner_trusts_its_saved_stat_cache(tmp_path: Path) -> None:
    first = Harness(tmp_path / "a")
    first.runner.tick()
    assert (first.state / "statcache").exists()
    # A second runner over the same data dir starts incremental: nothing re-hashed.
    registry = CollectorRegistry()
    rebuilt = Harness(tmp_path / "b")
    runner = Runner(
        subject=first.runner.subject,
        schedule=Schedule(interval=30, jitter=0, full_rehash_every=10),
        limits=Limits(),
        scanner=InProcessScanner(
            cache=StatCache.load(first.state / "statcache", racy_window_ns=0),
            cache_path=str(first.state / "statcache"),
        ),
        transport=rebuilt.transport,
        outbox=Outbox(capacity=4),
        sequence=SequenceNumbers(boot_id="b", data_dir=None, clock=rebuilt.clock),
        backoff=Backoff(),
        metrics=AgentMetrics(registry),
        footprint=lambda: Footprint(0, 0),
        clock=rebuilt.clock,
        monotonic=rebuilt.clock,
    )
    runner.tick()
    assert registry.get_sample_value("corral_agent_files_hashed_total") == 0
    assert rebuilt.transport.sent[0].header.root == first.image.root


def test_a_stopped_runner_abandons_its_scan(harness: Harness) -> None:
    for index in range(1500):  # enough entries for a progress call
        (harness.root / "var" / f"f{index}").write_bytes(b"")
    harness.runner.stop()
    assert harness.runner.scan_once() is None
    assert harness.transport.sent == []


def test_a_missing_root_is_counted_and_reports_nothing(harness: Harness) -> None:
    (harness.root / "bin" / "tool").unlink()
    (harness.root / "bin").rmdir()
    os.rename(harness.root, harness.root.with_name("gone"))
    assert harness.runner.scan_once() is None
    assert harness.metric("corral_agent_errors_total", reason="scan_failed") == 1


def test_the_watched_root_is_never_written(harness: Harness) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        out = {}
        for directory, names, files in os.walk(harness.root):
            for name in names + files:
                st = os.lstat(os.path.join(directory, name))
                out[os.path.join(directory, name)] = (st.st_mtime_ns, st.st_size)
        return out

    before = snapshot()
    for _ in range(3):
        harness.runner.tick()
        harness.clock.advance(30)
    assert snapshot() == before
    assert sorted(p.name for p in harness.state.iterdir()) == ["seq.json", "statcache"]


def test_the_read_budget_reaches_the_scanner_and_slows_it_on_the_fake_clock(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path, read_budget=10)  # 10 bytes/s; the tree holds 116 bytes
    started = harness.clock()
    harness.runner.tick()
    assert harness.clock() - started >= 5  # paid for at least half of it in sleeps
    assert len(harness.transport.sent) == 1


def test_drift_without_a_readable_manifest_is_still_reported_and_counted(
    harness: Harness, tmp_path: Path
) -> None:
    (tmp_path / "image" / "manifest.pb").write_bytes(b"not a manifest")
    (harness.root / "etc" / "motd").write_text("owned\n")
    harness.runner.tick()
    [report] = harness.transport.sent
    assert report.evidence is not None
    assert report.evidence.truncated and report.evidence.total_changes == 0
    assert harness.metric("corral_agent_errors_total", reason="evidence_unavailable") == 1
