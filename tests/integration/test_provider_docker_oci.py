"""The docker provider launches an image by the digest ``corral bake`` gave it.

The image is built, saved as an OCI archive and loaded back (as a deploy pulls
it by digest): the engine then answers to ``repo@<OCI manifest digest>``, the
digest in image.json, and the container is created from that very reference.
A docker archive has no manifest: its image.json digest is the config digest,
which the engine knows as the image ID.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.image.bake import bake
from agent.manifest.policy import Policy
from controller.providers import LaunchSpec
from controller.providers.docker import DockerConfig, DockerProvider
from tests.fixtures.oci_images import build, run
from tests.fixtures.podman import PodmanEngine, podman_engine

__all__ = ["podman_engine"]

pytestmark = pytest.mark.podman


def spec(ref: str, digest: str) -> LaunchSpec:
    instance_id = f"i-{uuid.uuid4().hex[:8]}"
    return LaunchSpec(
        group="oci",
        image_ref=ref,
        image_digest=digest,
        instance_id=instance_id,
        idempotency_key=f"key-{instance_id}",
        controller="127.0.0.1:1",
    )


@pytest.mark.parametrize("oci", [True, False], ids=["oci-archive", "docker-archive"])
def test_launch_by_the_baked_digest(podman_engine: PodmanEngine, tmp_path: Path, oci: bool) -> None:
    name = f"corral-provider-{'oci' if oci else 'docker'}"
    image = build(podman_engine, name, "RUN echo 1 > /marker\n", tmp_path / "context")
    archive = image.save(tmp_path / "image.tar", oci=oci)
    scheme = "oci-archive" if oci else "docker-archive"
    baked = bake(f"{scheme}:{archive}", str(tmp_path / "bake"), policy=Policy())
    ref, digest = baked.image["image_ref"], baked.image["image_digest"]
    run(podman_engine.command("rmi", image.tag))
    run(podman_engine.command("load", "--quiet", "--input", str(archive)))

    provider = DockerProvider(DockerConfig(base_url=podman_engine.base_url))
    try:
        launched = provider.launch(spec(ref, digest))
        assert launched.image_digest == digest
        created_from = run(
            podman_engine.command(
                "container",
                "inspect",
                "--format",
                "{{.ImageName}} {{.Image}}",
                launched.provider_id,
            )
        )
        assert created_from.split()[1] == baked.image["config_digest"].removeprefix("sha256:")
        if oci:  # the engine knows the container's image by the baked digest
            repo_digests = run(
                podman_engine.command(
                    "image", "inspect", "--format", "{{.RepoDigests}}", created_from.split()[1]
                )
            )
            assert ref in repo_digests
        provider.terminate(launched.instance_id)
    finally:
        provider.close()
