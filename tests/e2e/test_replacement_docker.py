"""Drift → replacement with the docker provider, on Podman's Docker-compatible service.

The image is built with podman from the test engine's busybox image (pinned by
digest) plus an ``/etc/app.conf``. Its root is baked with ``corral bake`` from
``podman image mount``, under a policy that leaves out the files the container
runtime writes into every container (``/etc/hosts``, ``/etc/hostname``,
``/etc/resolv.conf``, ``/etc/mtab``; ``/run``, ``/proc``, ``/dev`` and ``/sys``
are default excludes). The bake's image.json then names the podman image:
``image_digest`` is the engine's digest and ``image_ref`` is ``name@digest``,
which is what the controller registers and the provider launches.

A real controller (SQLite, short intervals) runs a docker group of size 2 in
enforce mode; the provider starts one host agent per container, watching its
merged root. A line appended to ``/etc/app.conf`` inside one container (as a
hand-patch would) must be detected, tainted with that path as evidence, and
replaced exactly once by a labelled container that reports conformant, after
which the old container is gone.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.demo import fleet as support
from controller.providers.agentproc import AgentProcesses, default_agent_prefix
from controller.providers.docker import DockerConfig, DockerProvider
from tests.e2e.support import STATE, Fleet
from tests.fixtures.podman import PodmanEngine, podman_engine

__all__ = ["podman_engine"]

pytestmark = pytest.mark.podman

IMAGE_NAME = "localhost/corral-e2e-app"
APP_CONF = "/etc/app.conf"
RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab")


@dataclass(frozen=True)
class BakedImage:
    ref: str
    digest: str
    bake_dir: Path


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr.strip()}"
    return result.stdout.strip()


def build_and_bake(engine: PodmanEngine, work: Path, *, artifacts: Path) -> BakedImage:
    """Build the app image with podman, bake its root, and file the bake under ``artifacts``."""
    context = work / "context"
    context.mkdir(parents=True)
    (context / "app.conf").write_text("listen = 0.0.0.0:8080\nworkers = 4\n")
    (context / "Containerfile").write_text(f"FROM {engine.image_ref}\nCOPY app.conf {APP_CONF}\n")
    tag = f"{IMAGE_NAME}:1"
    _run(engine.command("build", "--quiet", "--tag", tag, str(context)))
    digest = _run(engine.command("image", "inspect", "--format", "{{.Digest}}", tag))
    policy = work / "policy.toml"
    policy.write_text(f"[policy]\nextra_exclude = {json.dumps(list(RUNTIME_FILES))}\n")
    bake_dir = work / "bake"
    mounted = _run(engine.command("image", "mount", tag))
    try:
        _run(
            [sys.executable, "-m", "controller.cli.main", "bake", mounted, "--out", str(bake_dir),
             "--policy", str(policy), "--name", "corral-e2e-app", "--version", "1", "--json"]
        )  # fmt: skip
    finally:
        _run(engine.command("image", "unmount", tag))
    ref = f"{IMAGE_NAME}@{digest}"
    image_json = bake_dir / "image.json"
    document = json.loads(image_json.read_text())
    document.update(image_digest=digest, image_ref=ref)
    image_json.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    shutil.copytree(bake_dir, artifacts / ("sha256-" + digest.removeprefix("sha256:")))
    return BakedImage(ref=ref, digest=digest, bake_dir=bake_dir)


def stop_host_agents(data_dir: Path) -> None:
    """Stop, by PID, every host agent the docker provider recorded in ``data_dir``."""
    processes = AgentProcesses()
    for record_path in sorted(data_dir.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(record_path.read_text())
            processes.stop(int(record["pid"]), str(record["root"]))


@pytest.fixture
def docker_fleet(podman_engine: PodmanEngine, tmp_path: Path) -> Iterator[tuple[Fleet, Path]]:
    data = tmp_path / "fleet"
    data_dir, artifacts = data / "docker-agents", data / "docker-artifacts"
    artifacts.mkdir(parents=True)
    table = "\n".join(
        (
            "[providers.docker]",
            f"base_url = {json.dumps(podman_engine.base_url)}",
            f"agent_command = {json.dumps(list(default_agent_prefix()))}",
            f"data_dir = {json.dumps(str(data_dir))}",
            f"artifacts_dir = {json.dumps(str(artifacts))}",
            f"interval = {support.DemoSettings().scan_interval}",
            "",
        )
    )
    fleet = Fleet(data, extra_config=table)
    fleet.start()
    provider = DockerProvider(DockerConfig(base_url=podman_engine.base_url))
    try:
        yield fleet, artifacts
    finally:
        fleet.stop()
        stop_host_agents(data_dir)
        for container in provider.list("web"):
            provider.terminate(container.instance_id)
        provider.close()


def test_drift_in_a_container_is_replaced_once(
    podman_engine: PodmanEngine, docker_fleet: tuple[Fleet, Path], tmp_path: Path
) -> None:
    fleet, artifacts = docker_fleet
    image = build_and_bake(podman_engine, tmp_path / "image", artifacts=artifacts)
    fleet.register(image.bake_dir)
    fleet.group("web", image.ref, size=2, provider="docker")
    log = fleet.data / "controller.log"
    up = support.wait_for(lambda: fleet.conformant("web", 2, digest=image.digest), timeout=30)
    assert up, (fleet.states("web"), log.read_text()[-3000:])

    engine = DockerProvider(DockerConfig(base_url=podman_engine.base_url))
    try:
        before = {c.instance_id: c for c in engine.list("web")}
        assert sorted(before) == sorted(fleet.states("web"))
        victim = sorted(before)[0]
        _run(
            podman_engine.command(
                "exec", before[victim].provider_id, "sh", "-c",
                f"echo 'patched = true' >> {APP_CONF}",
            )
        )  # fmt: skip

        def evidence() -> list[bytes]:
            found = fleet.instance(victim)
            return [change.path for change in found.taint.changes]

        assert support.wait_for(lambda: bool(evidence()), timeout=15), fleet.states("web")
        assert evidence() == [APP_CONF.encode()]

        retired = lambda: fleet.states("web")[victim] == "retired"  # noqa: E731
        assert support.wait_for(retired, timeout=30), (fleet.states("web"), fleet.rows())
        assert support.wait_for(lambda: fleet.conformant("web", 2, digest=image.digest), timeout=20)

        replacements = [i for i in fleet.instances("web") if i.replaces == victim]
        assert len(replacements) == 1
        new = replacements[0]
        assert STATE[new.state] == "conformant"
        assert [row[2] for row in fleet.rows() if row[1] == victim] == ["done"]

        after = {c.instance_id: c for c in engine.list("web")}
        assert victim not in after  # the old container was removed
        assert sorted(after) == sorted(set(before) - {victim} | {new.id})
        labels = after[new.id].labels
        assert labels["io.corral.group"] == "web"
        assert labels["io.corral.instance"] == new.id
        assert labels["io.corral.image-digest"] == image.digest
        assert labels["io.corral.idempotency-key"]
        assert not (fleet.data / "docker-agents" / f"{victim}.json").exists()
    finally:
        engine.close()
