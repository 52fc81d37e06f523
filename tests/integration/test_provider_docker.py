"""The docker provider on a private Podman service: digests, roots, host agents, certificates."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import psutil
import pytest

from controller.providers import LaunchSpec, PermanentProviderError
from controller.providers.agentcerts import AgentCertificates
from controller.providers.agentproc import AgentProcesses
from controller.providers.docker import DockerConfig, DockerProvider
from controller.security.certs import init_ca, read_certificate
from tests.fixtures.podman import PodmanEngine, podman_engine
from tests.fixtures.stand_in_agent import ENV_RECORDING_AGENT, IDLE_AGENT, recorded_env

__all__ = ["podman_engine"]

pytestmark = pytest.mark.podman


def spec(image_ref: str, image_digest: str, instance_id: str) -> LaunchSpec:
    return LaunchSpec(
        group="web",
        image_ref=image_ref,
        image_digest=image_digest,
        instance_id=instance_id,
        idempotency_key=f"key-{instance_id}",
        controller="127.0.0.1:1",
    )


def test_images_must_be_pinned_and_present(podman_engine: PodmanEngine) -> None:
    provider = DockerProvider(DockerConfig(base_url=podman_engine.base_url))
    name = podman_engine.image_ref.split("@")[0]
    with pytest.raises(PermanentProviderError, match="not pinned"):
        provider.launch(spec(f"{name}:1", podman_engine.image_digest, "i-tag"))
    absent = "sha256:" + "0" * 64
    with pytest.raises(PermanentProviderError, match="not on the engine"):
        provider.launch(spec(f"{name}@{absent}", absent, "i-absent"))
    assert provider.list("web") == []


def test_host_agent_watches_the_merged_root(podman_engine: PodmanEngine, tmp_path: Path) -> None:
    provider = DockerProvider(
        DockerConfig(
            base_url=podman_engine.base_url,
            agent_prefix=IDLE_AGENT,
            data_dir=str(tmp_path / "agents"),
            artifacts_dir=str(tmp_path / "artifacts"),
        )
    )
    instance_id = f"i-{uuid.uuid4().hex[:8]}"
    launched = provider.launch(
        spec(podman_engine.image_ref, podman_engine.image_digest, instance_id)
    )
    try:
        assert launched.state == "running"
        assert launched.root_path is not None
        assert os.path.isfile(os.path.join(launched.root_path, "bin", "busybox"))
        record = json.loads((tmp_path / "agents" / f"{instance_id}.json").read_text())
        assert record["root"] == launched.root_path
        assert AgentProcesses().is_running(record["pid"], launched.root_path)
        argv = psutil.Process(record["pid"]).cmdline()
        assert argv[argv.index("--root") + 1] == launched.root_path
        assert argv[argv.index("--instance-id") + 1] == instance_id
    finally:
        provider.terminate(instance_id)
    assert not AgentProcesses().is_running(record["pid"], launched.root_path)
    assert provider.describe(instance_id) is None


def test_a_host_agent_gets_its_certificate_and_terminate_removes_it(
    podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    init_ca(tmp_path / "ca")
    provider = DockerProvider(
        DockerConfig(
            base_url=podman_engine.base_url,
            agent_prefix=ENV_RECORDING_AGENT,
            data_dir=str(tmp_path / "agents"),
            artifacts_dir=str(tmp_path / "artifacts"),
            agent_certificates=AgentCertificates(str(tmp_path / "ca")),
        )
    )
    instance_id = f"i-{uuid.uuid4().hex[:8]}"
    launch = spec(podman_engine.image_ref, podman_engine.image_digest, instance_id)
    state = tmp_path / "agents" / instance_id
    try:
        provider.launch(launch)
        cert = Path(recorded_env(state)["CORRAL_AGENT_TLS_CERT_FILE"])
        assert cert == state / "tls" / f"agent-{instance_id}.chain.crt"
        assert read_certificate(cert).uris == (f"spiffe://corral/agent/{instance_id}",)
        issued = cert.read_bytes()
        provider.launch(launch)  # retried: same container, agent still running, same certificate
        assert cert.read_bytes() == issued
    finally:
        provider.terminate(instance_id)
    assert not (state / "tls").exists()
    assert provider.describe(instance_id) is None
