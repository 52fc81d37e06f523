"""The docker provider's host agents get certificates the same way, and lose them on terminate.

The engine is a small in-memory stand-in for the docker SDK's client (the
real engine is covered by tests/integration/test_provider_docker.py); the
host agent is a stand-in process that records the TLS variables it was given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_agent_certs import ENV_RECORDING_AGENT, recorded_env

from controller.providers import LaunchSpec
from controller.providers.agentcerts import AgentCertificates
from controller.providers.docker import DockerConfig, DockerProvider
from controller.security.certs import init_ca, read_certificate

DIGEST = "sha256:" + "ab" * 32


class FakeContainer:
    def __init__(self, labels: dict[str, str], merged: str) -> None:
        self.id = "c-" + labels["io.corral.instance"]
        self.labels = labels
        self.status = "created"
        self.attrs: dict[str, Any] = {
            "State": {"Status": "created"},
            "GraphDriver": {"Data": {"MergedDir": merged}},
        }
        self.removed = False

    def start(self) -> None:
        self.status = "running"
        self.attrs["State"]["Status"] = "running"

    def reload(self) -> None:
        pass

    def remove(self, *, force: bool) -> None:
        self.removed = True


class FakeContainers:
    def __init__(self, merged: str) -> None:
        self.merged = merged
        self.made: list[FakeContainer] = []

    def list(self, *, all: bool, filters: dict[str, str]) -> list[FakeContainer]:
        key, _, value = filters["label"].partition("=")
        return [c for c in self.made if not c.removed and c.labels.get(key) == value]

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        container = FakeContainer(dict(kwargs["labels"]), self.merged)
        self.made.append(container)
        return container


class FakeImages:
    def get(self, ref: str) -> Any:
        return type("Image", (), {"id": "img-1"})()


class FakeClient:
    def __init__(self, merged: str) -> None:
        self.containers = FakeContainers(merged)
        self.images = FakeImages()

    def close(self) -> None:
        pass


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[DockerProvider]:
    init_ca(tmp_path / "ca")
    (tmp_path / "merged").mkdir()
    made = DockerProvider(
        DockerConfig(
            agent_prefix=ENV_RECORDING_AGENT,
            data_dir=str(tmp_path / "state"),
            artifacts_dir=str(tmp_path / "artifacts"),
            agent_certificates=AgentCertificates(str(tmp_path / "ca")),
        ),
        client=FakeClient(str(tmp_path / "merged")),
    )
    yield made
    made.terminate("d-1")


def test_a_host_agent_gets_its_certificate_and_terminate_removes_it(
    provider: DockerProvider, tmp_path: Path
) -> None:
    spec = LaunchSpec(
        group="web", image_ref=f"app@{DIGEST}", image_digest=DIGEST, instance_id="d-1",
        idempotency_key="k-1", controller="127.0.0.1:7000",
    )  # fmt: skip
    provider.launch(spec)
    state = tmp_path / "state" / "d-1"
    env = recorded_env(state)
    cert = Path(env["CORRAL_AGENT_TLS_CERT_FILE"])
    assert cert == state / "tls" / "agent-d-1.chain.crt"
    assert read_certificate(cert).uris == ("spiffe://corral/agent/d-1",)
    issued = cert.read_bytes()
    provider.launch(spec)  # retried: same container, agent still running, same certificate
    assert cert.read_bytes() == issued
    provider.terminate("d-1")
    assert not (state / "tls").exists()
