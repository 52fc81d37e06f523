"""The upper-directory check of a running Podman container equals a full scan of its root.

A container runs a multi-layer image whose manifest was baked from the image
archive. Changes are made inside it with ``podman exec`` (modify, add, delete a
lower file, replace a lower directory: an opaque directory, chmod, symlink,
FIFO, a change under an excluded path), and after each step the check that
reads only the overlay upper directory must give the root, the entry count and
the drift evidence that a full scan of the merged root gives.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.daemon.container import ContainerScanner, UpperDirCheck
from agent.daemon.engine import ContainerStorage, EngineError, inspect_container
from agent.daemon.metrics import AgentMetrics
from agent.daemon.scanjob import InProcessScanner, ScanOutcome, ScanRequest, scan_and_compare
from agent.image.bake import BakeResult, bake
from agent.manifest.policy import DEFAULT_EXCLUDE, Policy
from agent.scan.statcache import StatCache
from tests.fixtures.oci_images import INSTALL_APPLETS, build, run
from tests.fixtures.podman import PodmanEngine, podman_engine

__all__ = ["podman_engine"]

pytestmark = pytest.mark.podman

RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab")
POLICY = Policy(exclude=(*DEFAULT_EXCLUDE, *RUNTIME_FILES))
CONTAINERFILE = f"""{INSTALL_APPLETS}
RUN mkdir -p /opt/app/lib /opt/app/conf /srv/keep && echo 1 > /opt/app/lib/a.so \\
 && echo conf > /opt/app/conf/app.conf && echo k > /srv/keep/k && echo gone > /srv/gone
RUN rm /srv/gone && echo 2 > /opt/app/lib/b.so
CMD ["/bin/sleep", "3600"]
"""
STEPS = [
    "echo patched >> /opt/app/conf/app.conf",
    "echo new > /opt/app/conf/extra.conf",
    "rm /opt/app/lib/a.so",
    "rm -r /srv/keep && mkdir /srv/keep && echo again > /srv/keep/again",
    "chmod 700 /opt/app && ln -s /opt/app/conf /srv/conf-link && mkfifo /srv/fifo",
    "mkdir -p /tmp/cache && echo scratch > /tmp/scratch && echo x > /tmp/cache/x",
    "rm -r /opt/app/lib",
]


@pytest.fixture(scope="module")
def baked(podman_engine: PodmanEngine, tmp_path_factory: pytest.TempPathFactory) -> BakeResult:
    work = tmp_path_factory.mktemp("upper-image")
    image = build(podman_engine, "corral-upperdir", CONTAINERFILE, work / "context")
    archive = image.save(work / "image.tar", oci=True)
    return bake(f"oci-archive:{archive}", str(work / "bake"), policy=POLICY)


@pytest.fixture
def container(podman_engine: PodmanEngine, baked: BakeResult) -> Iterator[ContainerStorage]:
    name = f"corral-upper-{uuid.uuid4().hex[:8]}"
    run(podman_engine.command("run", "-d", "--name", name, "localhost/corral-upperdir:1"))
    try:
        yield inspect_container(podman_engine.base_url, name)
    finally:
        run(podman_engine.command("rm", "-f", "-t", "0", name))


def request(baked: BakeResult, root: str, *, full: bool = False) -> ScanRequest:
    return ScanRequest(
        root=root,
        policy=POLICY,
        full_rehash=full,
        baseline_root=baked.manifest.root,
        manifest_path=baked.manifest_path,
        max_changes=1000,
        max_evidence_bytes=1 << 20,
    )


def summary(outcome: ScanOutcome) -> tuple[bytes, int, list[tuple[str, bytes, tuple[str, ...]]]]:
    evidence = outcome.evidence
    changes = [] if evidence is None else evidence.changes
    return (
        outcome.root,
        outcome.entry_count,
        [(c.kind.value, c.path, c.attributes) for c in changes],
    )


def test_engine_reports_the_overlay_directories(container: ContainerStorage) -> None:
    assert container.driver == "overlay" and container.running
    assert container.upper_dir and Path(container.upper_dir).is_dir()
    assert container.merged_dir and Path(container.merged_dir, "opt/app").is_dir()


def test_upper_dir_check_equals_a_full_scan_at_every_step(
    podman_engine: PodmanEngine, container: ContainerStorage, baked: BakeResult
) -> None:
    assert container.merged_dir and container.upper_dir
    check = UpperDirCheck(
        merged_dir=container.merged_dir,
        upper_dir=container.upper_dir,
        policy=POLICY,
        racy_window_ns=0,
    )
    scan_request = request(baked, container.merged_dir)
    fresh = check.run(scan_request)
    assert fresh is not None and fresh.evidence is None
    assert fresh.root == baked.manifest.root
    seen_kinds: set[str] = set()
    for step in STEPS:
        run(podman_engine.command("exec", container.container_id, "sh", "-c", step))
        upper = check.run(scan_request)
        full = scan_and_compare(scan_request, cache=StatCache())
        assert upper is not None
        assert summary(upper) == summary(full), step
        seen_kinds |= {kind for kind, _, _ in summary(upper)[2]}
        again = check.run(scan_request)  # unchanged: digests come from the check's cache
        assert again is not None and summary(again) == summary(upper)
        assert again.files_hashed == 0
    assert seen_kinds == {"added", "removed", "modified"}


def test_excluded_changes_are_not_drift(
    podman_engine: PodmanEngine, container: ContainerStorage, baked: BakeResult
) -> None:
    assert container.merged_dir and container.upper_dir
    run(podman_engine.command("exec", container.container_id, "sh", "-c", STEPS[5]))
    check = UpperDirCheck(
        merged_dir=container.merged_dir, upper_dir=container.upper_dir, policy=POLICY
    )
    outcome = check.run(request(baked, container.merged_dir))
    assert outcome is not None and outcome.root == baked.manifest.root
    assert outcome.evidence is None


def test_scanner_uses_the_upper_dir_between_full_scans(
    podman_engine: PodmanEngine, container: ContainerStorage, baked: BakeResult, tmp_path: Path
) -> None:
    assert container.merged_dir
    metrics = AgentMetrics(CollectorRegistry())
    scanner = ContainerScanner(
        inner=InProcessScanner(cache_path=str(tmp_path / "cache")),
        storage=container,
        policy=POLICY,
        fallbacks=metrics.container_fallback,
    )
    run(podman_engine.command("exec", container.container_id, "sh", "-c", STEPS[0]))
    full = scanner.run(request(baked, container.merged_dir, full=True))
    quick = scanner.run(request(baked, container.merged_dir))
    assert summary(full) == summary(quick)
    assert quick.entry_count == full.entry_count
    assert full.files_hashed > quick.files_hashed
    assert metrics.container_fallback.labels(reason="no_upper_dir")._value.get() == 0


def test_without_an_upper_dir_every_check_is_a_full_scan(
    container: ContainerStorage, baked: BakeResult, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert container.merged_dir
    metrics = AgentMetrics(CollectorRegistry())
    storage = ContainerStorage(
        container.container_id, "vfs", container.merged_dir, None, running=True
    )
    scanner = ContainerScanner(
        inner=InProcessScanner(cache_path=str(tmp_path / "cache")),
        storage=storage,
        policy=POLICY,
        fallbacks=metrics.container_fallback,
    )
    outcome = scanner.run(request(baked, container.merged_dir))
    scanner.run(request(baked, container.merged_dir))
    assert outcome.root == baked.manifest.root and outcome.files_hashed > 0
    assert metrics.container_fallback.labels(reason="no_upper_dir")._value.get() == 3
    lines = [r.message for r in caplog.records if "no overlay upper directory" in r.message]
    assert len(lines) == 1 and "vfs" in lines[0]


def test_unknown_containers_and_engines_fail_clearly(podman_engine: PodmanEngine) -> None:
    with pytest.raises(EngineError, match="has no /containers/no-such-container/json"):
        inspect_container(podman_engine.base_url, "no-such-container")
    with pytest.raises(EngineError, match="cannot reach the engine"):
        inspect_container("unix:///nonexistent/engine.sock", "x")
    with pytest.raises(EngineError, match="not a unix"):
        inspect_container("tcp://127.0.0.1:2375", "x")
