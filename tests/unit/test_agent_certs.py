"""Certificates for agents the controller launches: exactly their instance, issued once.

:class:`AgentCertificates` on its own (the certificate's identity, validity,
modes, reuse and renewal), the local provider handing the files to the agent
it starts and reusing them on a relaunch with the same idempotency key, and
the wiring that turns ``agent_ca_dir`` on only for a controller with TLS.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.image.artifact import build_artifact
from agent.manifest.policy import Policy
from controller.config import ControllerConfig
from controller.engine.wiring import build_providers
from controller.providers import LaunchSpec, PermanentProviderError, create_provider
from controller.providers.agentcerts import AgentCertificates
from controller.providers.local import LocalConfig, LocalProvider
from controller.security.certs import init_ca, read_certificate
from tests.fixtures.stand_in_agent import ENV_RECORDING_AGENT, recorded_env

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_the_certificate_names_exactly_the_instance(ca: Path, tmp_path: Path) -> None:
    files = AgentCertificates(str(ca), days=30).ensure("i-7", str(tmp_path / "state"), now=NOW)
    info = read_certificate(Path(files.cert_file))
    assert info.uris == ("spiffe://corral/agent/i-7",)
    assert info.not_after == NOW + datetime.timedelta(days=30)
    assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(files.key_file)).st_mode) == 0o700
    assert Path(files.ca_file).read_bytes() == (ca / "ca.pem").read_bytes()
    assert files.env() == {
        "CORRAL_AGENT_TLS_CA_FILE": files.ca_file,
        "CORRAL_AGENT_TLS_CERT_FILE": files.cert_file,
        "CORRAL_AGENT_TLS_KEY_FILE": files.key_file,
    }
    assert all(os.path.isabs(path) for path in files.env().values())


def test_the_trust_domain_is_the_controllers(ca: Path, tmp_path: Path) -> None:
    issuer = AgentCertificates(str(ca), trust_domain="fleet.example")
    files = issuer.ensure("i-7", str(tmp_path / "state"), now=NOW)
    assert read_certificate(Path(files.cert_file)).uris == ("spiffe://fleet.example/agent/i-7",)


def test_a_second_ensure_reuses_until_the_last_tenth_of_validity(ca: Path, tmp_path: Path) -> None:
    issuer = AgentCertificates(str(ca), days=30)
    state = str(tmp_path / "state")
    first = issuer.ensure("i-7", state, now=NOW)
    issued = Path(first.cert_file).read_bytes(), Path(first.key_file).read_bytes()
    later = NOW + datetime.timedelta(days=26)
    assert issuer.ensure("i-7", state, now=later) == first
    assert (Path(first.cert_file).read_bytes(), Path(first.key_file).read_bytes()) == issued
    renewed = issuer.ensure("i-7", state, now=NOW + datetime.timedelta(days=28))
    assert Path(renewed.cert_file).read_bytes() != issued[0]
    assert Path(renewed.key_file).read_bytes() != issued[1]
    assert sorted(os.listdir(state)) == ["tls"]  # no staging directory left behind


def test_a_certificate_for_another_instance_is_replaced(ca: Path, tmp_path: Path) -> None:
    issuer = AgentCertificates(str(ca))
    state = tmp_path / "state"
    issuer.ensure("i-1", str(state), now=NOW)
    files = issuer.ensure("i-2", str(state), now=NOW)
    assert read_certificate(Path(files.cert_file)).uris == ("spiffe://corral/agent/i-2",)
    assert sorted(p.name for p in (state / "tls").iterdir()) == [
        "agent-i-2.chain.crt",
        "agent-i-2.crt",
        "agent-i-2.key",
        "ca.pem",
    ]


def test_a_directory_without_a_ca_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(PermanentProviderError, match=r"holds no ca\.key"):
        create_provider("local", {"data_dir": str(tmp_path), "agent_ca_dir": str(tmp_path)})
    with pytest.raises(PermanentProviderError, match="must be positive"):
        AgentCertificates(str(tmp_path), days=0).check()


@pytest.fixture
def provider(ca: Path, tmp_path: Path) -> Iterator[LocalProvider]:
    made = LocalProvider(
        LocalConfig(
            data_dir=str(tmp_path / "data"),
            agent_prefix=ENV_RECORDING_AGENT,
            agent_certificates=AgentCertificates(str(ca), days=30),
        )
    )
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("port = 8080\n")
    owner = (os.geteuid(), os.getegid())
    build_artifact(root, tmp_path / "out", name="web", version="1", policy=Policy(), owner=owner)
    made.import_artifact(str(tmp_path / "out"))
    yield made
    for instance in made.list("web"):
        made.terminate(instance.instance_id)


def _spec(provider: LocalProvider, tmp_path: Path, instance_id: str, key: str) -> LaunchSpec:
    image = json.loads((tmp_path / "out" / "image.json").read_text())
    return LaunchSpec(
        group="web",
        image_ref=image["image_ref"],
        image_digest=image["image_digest"],
        instance_id=instance_id,
        idempotency_key=key,
        controller="127.0.0.1:7000",
    )


def test_the_local_provider_gives_each_agent_its_own_certificate_once(
    provider: LocalProvider, tmp_path: Path
) -> None:
    state = tmp_path / "data" / "instances" / "i-1" / "state"
    first = provider.launch(_spec(provider, tmp_path, "i-1", "k-1"))
    env = recorded_env(state)
    assert env["CORRAL_AGENT_TLS_CERT_FILE"] == str(state / "tls" / "agent-i-1.chain.crt")
    cert = Path(env["CORRAL_AGENT_TLS_CERT_FILE"])
    assert read_certificate(cert).uris == ("spiffe://corral/agent/i-1",)
    issued = cert.read_bytes()

    assert provider.launch(_spec(provider, tmp_path, "i-1", "k-1")) == first  # agent still up
    os.kill(int(first.provider_id), 9)
    (state / "env.json").unlink()
    deadline = time.monotonic() + 10
    while (described := provider.describe("i-1")) and described.state == "running":
        assert time.monotonic() < deadline, "the killed agent still runs"
        time.sleep(0.02)
    again = provider.launch(_spec(provider, tmp_path, "i-1", "k-1"))
    assert again.provider_id != first.provider_id  # the agent was restarted...
    assert recorded_env(state) == env
    assert cert.read_bytes() == issued  # ...with the certificate issued the first time

    provider.launch(_spec(provider, tmp_path, "i-2", "k-2"))
    other = recorded_env(tmp_path / "data" / "instances" / "i-2" / "state")
    assert read_certificate(Path(other["CORRAL_AGENT_TLS_CERT_FILE"])).uris == (
        "spiffe://corral/agent/i-2",
    )


def test_agent_ca_dir_is_used_only_by_a_controller_with_tls(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = (("agent_ca_dir", str(ca)), ("data_dir", str(tmp_path / "data")))
    plaintext = ControllerConfig(data_dir=str(tmp_path / "data"), providers=(("local", table),))
    with caplog.at_level(logging.WARNING, logger="corral.replacer"):
        local = build_providers(plaintext)["local"]
    assert isinstance(local, LocalProvider)
    assert local._config.agent_certificates is None
    assert "agent_ca_dir is ignored" in caplog.text

    tls = ControllerConfig(tls_ca_file="ca.pem", tls_cert_file="c.crt", tls_key_file="c.key")
    secured = replace(tls, providers=(("local", table),), trust_domain="fleet.example")
    local = build_providers(secured)["local"]
    assert isinstance(local, LocalProvider)
    assert local._config.agent_certificates == AgentCertificates(
        str(ca), days=30, trust_domain="fleet.example"
    )

    caplog.clear()
    bare = (("data_dir", str(tmp_path / "data")),)
    with caplog.at_level(logging.WARNING, logger="corral.replacer"):
        build_providers(replace(tls, providers=(("local", bare),)))
    assert "starts agents without certificates" in caplog.text
