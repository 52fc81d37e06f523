"""The upper-directory check without an engine: OCI-style whiteouts, scope, root and evidence.

The "merged" root and the "upper" directory are plain directories here, kept
consistent by hand (overlayfs keeps them so for a real container, see
tests/integration/test_container_upperdir.py): the check must give the root,
entry count and evidence that a full scan of the merged root gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.daemon.container import ContainerScanner, UpperDirCheck
from agent.daemon.engine import ContainerStorage
from agent.daemon.metrics import AgentMetrics
from agent.daemon.scanjob import ScanOutcome, ScanRequest, scan_and_compare
from agent.daemon.upperdir import read_upper
from agent.image.bake import bake
from agent.manifest.policy import Policy
from agent.scan.statcache import StatCache

POLICY = Policy(exclude=("/tmp", "/var/log"))


def tree(root: Path, files: dict[str, str]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


@pytest.fixture
def container(tmp_path: Path) -> tuple[Path, Path, ScanRequest]:
    merged, upper = tmp_path / "merged", tmp_path / "upper"
    tree(merged, {"etc/app.conf": "a", "etc/keep": "k", "opt/lib/a.so": "1", "opt/lib/b.so": "2",
                  "srv/data/x": "x", "tmp/scratch": "s"})  # fmt: skip
    upper.mkdir()
    result = bake(str(merged), str(tmp_path / "bake"), policy=POLICY, name="app", version="1")
    request = ScanRequest(
        root=str(merged), policy=POLICY, full_rehash=False, baseline_root=result.manifest.root,
        manifest_path=result.manifest_path, max_changes=100, max_evidence_bytes=1 << 20,
    )  # fmt: skip
    return merged, upper, request


def summary(outcome: ScanOutcome | None) -> tuple[bytes, int, list[tuple[str, bytes]]]:
    assert outcome is not None
    changes = outcome.evidence.changes if outcome.evidence else ()
    return outcome.root, outcome.entry_count, [(c.kind.value, c.path) for c in changes]


def test_unchanged_container_is_its_baseline(container: tuple[Path, Path, ScanRequest]) -> None:
    merged, upper, request = container
    outcome = UpperDirCheck(merged_dir=str(merged), upper_dir=str(upper), policy=POLICY).run(
        request
    )
    assert outcome is not None and outcome.root == request.baseline_root
    assert outcome.evidence is None and outcome.files_hashed == 0


def test_changes_removals_and_opaque_directories(
    container: tuple[Path, Path, ScanRequest],
) -> None:
    merged, upper, request = container
    check = UpperDirCheck(
        merged_dir=str(merged), upper_dir=str(upper), policy=POLICY, racy_window_ns=0
    )
    # modify and add
    tree(merged, {"etc/app.conf": "patched", "etc/new": "n"})
    tree(upper, {"etc/app.conf": "patched", "etc/new": "n"})
    # remove a file and a directory (OCI-style whiteouts)
    (merged / "etc" / "keep").unlink()
    (merged / "srv" / "data" / "x").unlink()
    (merged / "srv" / "data").rmdir()
    tree(upper, {"etc/.wh.keep": "", "srv/.wh.data": ""})
    # replace a directory: opaque
    for name in ("a.so", "b.so"):
        (merged / "opt" / "lib" / name).unlink()
    tree(merged, {"opt/lib/c.so": "3"})
    tree(upper, {"opt/lib/.wh..wh..opq": "", "opt/lib/c.so": "3"})
    # excluded: never looked at
    tree(merged, {"tmp/more": "m"})
    tree(upper, {"tmp/more": "m"})
    for directory in ("etc", "srv", "opt", "opt/lib"):
        os.chmod(upper / directory, os.stat(merged / directory).st_mode)
    upper_outcome = check.run(request)
    full = scan_and_compare(request, cache=StatCache())
    assert summary(upper_outcome) == summary(full)
    assert [path for _, path in summary(full)[2]] == [
        b"/etc/app.conf", b"/etc/keep", b"/etc/new", b"/opt/lib/a.so", b"/opt/lib/b.so",
        b"/opt/lib/c.so", b"/srv/data", b"/srv/data/x",
    ]  # fmt: skip
    again = check.run(request)
    assert summary(again) == summary(upper_outcome) and again is not None
    assert again.files_hashed == 0 and again.files_cached == 3
    racy = UpperDirCheck(merged_dir=str(merged), upper_dir=str(upper), policy=POLICY)
    assert racy.run(request) is not None
    rehashed = racy.run(request)  # the files were written just now: not trusted yet
    assert rehashed is not None and rehashed.files_hashed == 3


def test_read_upper_respects_the_policy(tmp_path: Path) -> None:
    tree(tmp_path, {"tmp/a": "", "var/log/x/y": "", "var/lib/z": "", "usr/.wh.gone": "",
                    "usr/bin/.wh..wh..opq": "", "usr/.wh..wh.plnk": ""})  # fmt: skip
    changes = read_upper(str(tmp_path), Policy(include=("/usr", "/var/lib"), exclude=("/var/log",)))
    assert sorted(changes.present) == [b"/usr", b"/usr/bin", b"/var/lib", b"/var/lib/z"]
    assert changes.removed == [b"/usr/gone"]
    assert changes.opaque == [b"/usr/bin"]
    everything = read_upper(str(tmp_path), Policy(exclude=()))
    assert b"/" in everything.present and b"/tmp/a" in everything.present


class _Inner:
    def __init__(self) -> None:
        self.requests: list[ScanRequest] = []

    def run(self, request: ScanRequest) -> ScanOutcome:
        self.requests.append(request)
        return ScanOutcome(b"r" * 32, 1, 1, 0, 1, 0, 0.1, None)

    def has_cache(self) -> bool:
        return True

    def stop(self) -> None:
        pass


def test_full_rounds_go_to_the_merged_root_scan(container: tuple[Path, Path, ScanRequest]) -> None:
    merged, upper, request = container
    inner = _Inner()
    metrics = AgentMetrics(CollectorRegistry())
    scanner = ContainerScanner(
        inner=inner,
        storage=ContainerStorage("c" * 64, "overlay", str(merged), str(upper), running=True),
        policy=POLICY,
        fallbacks=metrics.container_fallback,
    )
    full = ScanRequest(**{**request.__dict__, "full_rehash": True})
    assert scanner.run(full).root == b"r" * 32 and inner.requests == [full]
    assert scanner.run(request).root == request.baseline_root and len(inner.requests) == 1
    assert scanner.has_cache()
