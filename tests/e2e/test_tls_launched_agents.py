"""Agents the controller launches carry their own certificates under mutual TLS.

A controller serving mTLS on 127.0.0.1 with ``[providers.local] agent_ca_dir``
launches a group of two: each agent gets a certificate naming exactly its
instance and both become conformant, which they can only do over mTLS (the
controller refuses a plaintext or anonymous report in the handshake). One
drifts and is replaced; the replacement's agent gets a certificate of its own,
and the retired instance's key goes with its directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo import fleet as support
from controller.security.certs import init_ca, issue, read_certificate
from controller.security.identity import Role
from controller.security.tls import TlsFiles
from tests.e2e.support import Fleet


def _files(issued_dir: Path, stem: str) -> TlsFiles:
    return TlsFiles(
        ca_file=str(issued_dir / "ca.pem"),
        cert_file=str(issued_dir / f"{stem}.chain.crt"),
        key_file=str(issued_dir / f"{stem}.key"),
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca = tmp_path / "ca"
    init_ca(ca)
    issue(ca, Role.CONTROLLER, "ctl-1", out=tmp_path / "tls")
    issue(ca, Role.OPERATOR, "alice", days=1, out=tmp_path / "alice")
    running = Fleet(
        tmp_path / "fleet",
        local_config=f"agent_ca_dir = {json.dumps(str(ca))}\nagent_cert_days = 7",
        server_tls=_files(tmp_path / "tls", "controller-ctl-1"),
        client_tls=_files(tmp_path / "alice", "operator-alice"),
    )
    running.start()
    yield running
    running.stop()


def _certificate_of(fleet: Fleet, instance_id: str) -> tuple[str, ...]:
    tls = fleet.data / "instances" / instance_id / "state" / "tls"
    return read_certificate(tls / f"agent-{instance_id}.chain.crt").uris


def test_launched_agents_report_over_mtls_and_a_replacement_gets_its_own_cert(
    fleet: Fleet,
) -> None:
    fleet.group("web", fleet.image("1"), size=2)
    assert support.wait_for(lambda: fleet.conformant("web", 2), timeout=40), fleet.states("web")
    first = sorted(fleet.states("web"))
    for instance_id in first:
        assert _certificate_of(fleet, instance_id) == (f"spiffe://corral/agent/{instance_id}",)
        key = fleet.data / "instances" / instance_id / "state" / "tls" / f"agent-{instance_id}.key"
        assert key.stat().st_mode & 0o777 == 0o600

    victim = first[0]
    fleet.drift(victim)
    assert support.wait_for(lambda: fleet.states("web").get(victim) == "retired", timeout=40)
    assert support.wait_for(lambda: fleet.conformant("web", 2), timeout=40), fleet.states("web")
    [replacement] = [i.id for i in fleet.instances("web") if i.replaces == victim]
    assert replacement not in first
    assert _certificate_of(fleet, replacement) == (f"spiffe://corral/agent/{replacement}",)
    assert not (fleet.data / "instances" / victim).exists()  # its key went with it
    log = (fleet.data / "controller.log").read_text()
    assert "BEGIN" not in log and "PRIVATE KEY" not in log
