"""Containers end to end: build, save, bake the archive, register, deploy by digest, drift.

A multi-layer image (files deleted and a directory replaced in later layers)
is built from a Containerfile with Podman and saved as an OCI archive.
``corral bake oci-archive:...`` bakes it without an engine; its image.json
names the archive's OCI manifest digest, which is what gets registered and
what the group deploys. The archive is loaded into the engine (as a deploy
pulls by digest) and the docker provider creates each container from
``repo@sha256:<that digest>``, with a host agent in container mode (upper
directory checks). A file changed inside one container with ``podman exec``
must be reported with that path as evidence, tainted and replaced once, and
the replacement must be conformant.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from controller.demo import fleet as support
from controller.providers.docker import DockerConfig, DockerProvider
from tests.e2e.support import STATE, Fleet
from tests.e2e.test_replacement_docker import docker_fleet
from tests.fixtures.oci_images import INSTALL_APPLETS, build, run
from tests.fixtures.podman import PodmanEngine, podman_engine

__all__ = ["docker_fleet", "podman_engine"]

pytestmark = pytest.mark.podman

APP_CONF = "/etc/app/app.conf"
RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab")
CONTAINERFILE = f"""{INSTALL_APPLETS}
RUN mkdir -p /etc/app /opt/app/lib && echo old > /opt/app/lib/old.so && echo tmp > /etc/app/tmp
COPY app.conf {APP_CONF}
RUN rm /etc/app/tmp && rm -r /opt/app/lib && mkdir /opt/app/lib && echo new > /opt/app/lib/new.so
CMD ["/bin/sleep", "3600"]
"""


def bake_archive(archive: Path, out: Path, work: Path) -> dict[str, str]:
    policy = work / "policy.toml"
    policy.write_text(f"[policy]\nextra_exclude = {json.dumps(list(RUNTIME_FILES))}\n")
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "bake", f"oci-archive:{archive}",
         "--out", str(out), "--policy", str(policy), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document: dict[str, str] = json.loads(result.stdout)
    return document


def test_container_image_from_archive_to_replacement(
    podman_engine: PodmanEngine, docker_fleet: tuple[Fleet, Path], tmp_path: Path
) -> None:
    fleet, artifacts = docker_fleet
    image = build(
        podman_engine, "corral-e2e-oci", CONTAINERFILE, tmp_path / "context",
        files={"app.conf": b"listen = 0.0.0.0:8080\n"},
    )  # fmt: skip
    archive = image.save(tmp_path / "image.tar", oci=True)
    document = bake_archive(archive, tmp_path / "bake", tmp_path)
    digest = document["image_digest"]
    assert digest == document["oci_manifest_digest"] != document["manifest_digest"]
    assert document["image_ref"] == f"localhost/corral-e2e-oci@{digest}"
    run(podman_engine.command("rmi", image.tag))  # the engine gets the image from the archive
    run(podman_engine.command("load", "--quiet", "--input", str(archive)))
    shutil.copytree(tmp_path / "bake", artifacts / ("sha256-" + digest.removeprefix("sha256:")))

    fleet.register(tmp_path / "bake")
    fleet.group("web", document["image_ref"], size=2, provider="docker")
    log = fleet.data / "controller.log"
    up = support.wait_for(lambda: fleet.conformant("web", 2, digest=digest), timeout=60)
    assert up, (fleet.states("web"), log.read_text()[-3000:])

    engine = DockerProvider(DockerConfig(base_url=podman_engine.base_url))
    try:
        before = {c.instance_id: c for c in engine.list("web")}
        victim = sorted(before)[0]
        record = json.loads((fleet.data / "docker-agents" / f"{victim}.json").read_text())
        command = psutil.Process(int(record["pid"])).cmdline()
        assert command[command.index("--container") + 1] == before[victim].provider_id

        run(
            podman_engine.command(
                "exec", before[victim].provider_id, "sh", "-c", f"echo 'patched = 1' >> {APP_CONF}"
            )
        )

        def evidence() -> list[bytes]:
            found = fleet.instance(victim)  # lists carry summaries; the evidence is here
            return [change.path for change in found.taint.changes]

        assert support.wait_for(lambda: bool(evidence()), timeout=20), fleet.states("web")
        assert evidence() == [APP_CONF.encode()]
        retired = lambda: fleet.states("web")[victim] == "retired"  # noqa: E731
        assert support.wait_for(retired, timeout=40), (fleet.states("web"), fleet.rows())
        assert support.wait_for(lambda: fleet.conformant("web", 2, digest=digest), timeout=40)
        [new] = [i for i in fleet.instances("web") if i.replaces == victim]
        assert STATE[new.state] == "conformant" and new.image_digest == digest
        after = {c.instance_id: c for c in engine.list("web")}
        assert victim not in after
        assert after[new.id].labels["io.corral.image-digest"] == digest
    finally:
        engine.close()
