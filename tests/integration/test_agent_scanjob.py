"""Scans in a child process (`python -m agent.daemon.scanjob`): the agent's default scanner."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest

from agent.daemon.identity import read_image_json
from agent.daemon.scanjob import ScanRequest, SubprocessScanner
from agent.errors import AgentError
from agent.image.bake import bake
from agent.manifest.diff import ChangeKind
from agent.manifest.policy import Policy
from agent.scan.pacing import ScanStoppedError
from agent.scan.statcache import StatCache
from controller.demo.fleet import wait_for

POLICY = Policy(include=("/",), exclude=())


def baked(tmp_path: Path) -> tuple[Path, ScanRequest]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    baked = bake(str(root), str(tmp_path / "image"), policy=POLICY, name="x")
    identity = read_image_json(baked.image_path)
    request = ScanRequest(
        root=str(root),
        policy=identity.policy,
        full_rehash=False,
        baseline_root=identity.root,
        manifest_path=baked.manifest_path,
        max_changes=100,
        max_evidence_bytes=1 << 20,
    )
    return root, request


def test_a_child_scan_reports_the_root_and_keeps_the_cache(tmp_path: Path) -> None:
    _root, request = baked(tmp_path)
    scanner = SubprocessScanner(cache_path=str(tmp_path / "statcache"))
    assert not scanner.has_cache()
    outcome = scanner.run(request)
    assert outcome.root == request.baseline_root and outcome.evidence is None
    assert outcome.entry_count == 4 and outcome.files_hashed + outcome.files_cached == 2
    assert scanner.has_cache()
    assert isinstance(StatCache.load(tmp_path / "statcache"), StatCache)


def test_a_child_scan_of_a_drifted_root_brings_back_the_evidence(tmp_path: Path) -> None:
    root, request = baked(tmp_path)
    (root / "etc" / "motd").write_text("owned\n")
    (root / "etc" / "extra").write_text("new\n")
    outcome = SubprocessScanner(cache_path=str(tmp_path / "statcache")).run(request)
    assert outcome.evidence is not None
    kinds = {change.path: change.kind for change in outcome.evidence.changes}
    assert kinds == {b"/etc/motd": ChangeKind.MODIFIED, b"/etc/extra": ChangeKind.ADDED}


def test_a_failed_child_scan_raises_with_the_reason(tmp_path: Path) -> None:
    _root, request = baked(tmp_path)
    missing = ScanRequest(**{**request.__dict__, "root": str(tmp_path / "absent")})
    with pytest.raises(AgentError, match="is not a directory"):
        SubprocessScanner(cache_path=str(tmp_path / "statcache")).run(missing)


def test_stop_ends_a_running_child_scan(tmp_path: Path) -> None:
    _root, request = baked(tmp_path)
    slow = ScanRequest(**{**request.__dict__, "read_budget": 1})  # 1 byte/s: never finishes
    scanner = SubprocessScanner(cache_path=str(tmp_path / "statcache"))
    caught: list[BaseException] = []

    def run() -> None:
        try:
            scanner.run(slow)
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert wait_for(_scan_child_started, timeout=30)  # it blocks on its budget from then on
    scanner.stop()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert len(caught) == 1 and isinstance(caught[0], ScanStoppedError)
    with pytest.raises(ScanStoppedError):
        scanner.run(request)


def _scan_child_started() -> bool:
    """A child of this process runs ``agent.daemon.scanjob``."""
    return any(
        "agent.daemon.scanjob" in " ".join(child.cmdline()) for child in psutil.Process().children()
    )
