"""Mutual TLS, roles and limits on the REAL controller: ControllerServer, service, SQLite.

Where ``test_mtls.py`` proves the security package against in-test servicers,
this starts the controller as ``corral-controller serve`` wires it (its config
naming the TLS files) on 127.0.0.1:0 with SQLite in a temporary directory, and
checks what the issue asks for with real certificates: refused handshakes,
an agent confined to its own instance with nothing stored, auditors that only
read, operators named by their certificate whatever metadata they send, size
and rate limits, and every refusal counted in ``corral_grpc_requests_total``.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from controller.app import Controller, start_controller
from controller.config import ControllerConfig
from controller.security import certs, interceptor
from controller.security.identity import Role
from controller.security.interceptor import RETRY_AFTER_METADATA
from controller.security.tls import TlsFiles, channel_credentials
from protos.corral.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, manifest_pb2
from tests.fixtures.baked import ENTRIES, Baked
from tests.fixtures.clock import FakeClock

MAX_MESSAGE = 64 * 1024
AGENT = "/corral.v1.AgentService"
FLEET = "/corral.v1.FleetService"


@dataclass
class Pki:
    out: Path
    foreign: Path

    def files(self, role: Role, name: str, *, out: Path | None = None) -> TlsFiles:
        where = out or self.out
        stem = where / f"{role}-{name}"
        return TlsFiles(str(self.out / "ca.pem"), f"{stem}.chain.crt", f"{stem}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    pki = Pki(out=base / "out", foreign=base / "foreign")
    certs.init_ca(base / "ca")
    certs.init_ca(base / "other")
    certs.issue(base / "ca", Role.CONTROLLER, "c1", out=pki.out)
    for name in ("i-1", "i-2", "i-big"):
        certs.issue(base / "ca", Role.AGENT, name, out=pki.out)
    certs.issue(base / "ca", Role.OPERATOR, "alice", out=pki.out)
    certs.issue(base / "ca", Role.AUDITOR, "bob", out=pki.out)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    certs.issue(base / "ca", Role.OPERATOR, "expired", out=pki.out, not_after=past)
    certs.issue(base / "other", Role.OPERATOR, "alice", out=pki.foreign)
    return pki


class TlsController:
    """The real controller with TLS on a private loop in a thread, and stubs per identity."""

    def __init__(self, data_dir: Path, pki: Pki, **overrides: Any) -> None:
        tls = pki.files(Role.CONTROLLER, "c1")
        config = ControllerConfig(
            listen="127.0.0.1:0",
            data_dir=str(data_dir),
            max_message_bytes=MAX_MESSAGE,
            tls_ca_file=tls.ca_file,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            **{"agent_rate": 100.0, "agent_burst": 100, **overrides},
        )
        self.pki = pki
        self.registry = CollectorRegistry()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.controller: Controller = self._run(
            start_controller(config, clock=FakeClock(), registry=self.registry, sweeps=False)
        )
        self.channels: list[grpc.Channel] = []

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def channel(self, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        channel = grpc.secure_channel(f"127.0.0.1:{self.controller.port}", credentials)
        self.channels.append(channel)
        return channel

    def agent(self, name: str) -> agent_pb2_grpc.AgentServiceStub:
        files = self.pki.files(Role.AGENT, name)
        return agent_pb2_grpc.AgentServiceStub(self.channel(channel_credentials(files)))

    def fleet(self, role: Role, name: str, *, out: Path | None = None) -> Any:
        files = self.pki.files(role, name, out=out)
        return fleet_pb2_grpc.FleetServiceStub(self.channel(channel_credentials(files)))

    def requests(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value(
            "corral_grpc_requests_total", {"method": method, "code": code}
        )
        return value or 0.0

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self._run(self.controller.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def baked() -> Baked:
    return Baked(entries=ENTRIES[:2])


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, baked: Baked
) -> Iterator[TlsController]:
    """A TLS controller where operator alice registered ``web`` and agent i-1 reported."""
    controller = TlsController(tmp_path_factory.mktemp("data"), pki)
    alice = controller.fleet(Role.OPERATOR, "alice")
    alice.RegisterImage(iter(baked.register_requests()), timeout=5)
    group = fleet_pb2.Group(name="web", desired_image_ref=baked.ref)
    alice.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=5)
    response = controller.agent("i-1").Report(
        agent_pb2.ReportRequest(header=baked.header(instance_id="i-1")), timeout=5
    )
    assert response.state == agent_pb2.INSTANCE_STATE_CONFORMANT
    yield controller
    controller.close()


def _code(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)  # a failed client call's error is that call
    return error


def _instance(running: TlsController, instance_id: str) -> fleet_pb2.Instance | None:
    reader = running.fleet(Role.AUDITOR, "bob")
    try:
        request = fleet_pb2.GetInstanceRequest(instance_id=instance_id)
        instance: fleet_pb2.Instance = reader.GetInstance(request, timeout=5).instance
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    return instance


def test_an_agent_reporting_as_another_instance_is_denied_and_nothing_is_stored(
    running: TlsController, baked: Baked
) -> None:
    before = running.requests(f"{AGENT}/Report", "PERMISSION_DENIED")
    stub = running.agent("i-1")
    error = _code(
        lambda: stub.Report(
            agent_pb2.ReportRequest(header=baked.header(instance_id="i-2")), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    drift = agent_pb2.ReportDriftRequest(header=baked.header(instance_id="i-2", root=b"\x07" * 32))
    assert _code(lambda: stub.ReportDrift(drift, timeout=5)).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _instance(running, "i-2") is None
    assert running.requests(f"{AGENT}/Report", "PERMISSION_DENIED") == before + 1
    assert running.requests(f"{AGENT}/ReportDrift", "PERMISSION_DENIED") >= 1


@pytest.mark.parametrize("who", ["anonymous", "other CA", "expired"])
def test_a_caller_without_a_valid_certificate_fails_the_handshake(
    running: TlsController, pki: Pki, who: str
) -> None:
    ca = Path(pki.out / "ca.pem").read_bytes()
    if who == "anonymous":
        stub = fleet_pb2_grpc.FleetServiceStub(
            running.channel(grpc.ssl_channel_credentials(root_certificates=ca))
        )
    elif who == "other CA":
        stub = running.fleet(Role.OPERATOR, "alice", out=pki.foreign)
    else:
        stub = running.fleet(Role.OPERATOR, "expired")
    request = fleet_pb2.TaintInstanceRequest(instance_id="i-1", reason="forged")
    assert _code(lambda: stub.TaintInstance(request, timeout=5)).code() == (
        grpc.StatusCode.UNAVAILABLE
    )
    instance = _instance(running, "i-1")
    assert instance is not None and instance.state == agent_pb2.INSTANCE_STATE_CONFORMANT


def test_a_plaintext_client_is_refused(running: TlsController) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.controller.port}") as channel:
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        error = _code(lambda: stub.ListGroups(fleet_pb2.ListGroupsRequest(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_an_auditor_reads_but_cannot_register_taint_or_roll_out(
    running: TlsController, baked: Baked
) -> None:
    bob = running.fleet(Role.AUDITOR, "bob")
    assert [g.name for g in bob.ListGroups(fleet_pb2.ListGroupsRequest(), timeout=5).groups] == [
        "web"
    ]
    before = running.requests(f"{FLEET}/TaintInstance", "PERMISSION_DENIED")
    calls = {
        "RegisterImage": lambda: bob.RegisterImage(iter(baked.register_requests()), timeout=5),
        "CreateGroup": lambda: bob.CreateGroup(
            fleet_pb2.CreateGroupRequest(group=fleet_pb2.Group(name="x", desired_image_ref="y")),
            timeout=5,
        ),
        "TaintInstance": lambda: bob.TaintInstance(
            fleet_pb2.TaintInstanceRequest(instance_id="i-1", reason="bob says"), timeout=5
        ),
        "Rollout": lambda: bob.Rollout(
            fleet_pb2.RolloutRequest(group="web", image_ref=baked.ref), timeout=5
        ),
        "Rollback": lambda: bob.Rollback(fleet_pb2.RollbackRequest(group="web"), timeout=5),
        "ResumeGroup": lambda: bob.ResumeGroup(
            fleet_pb2.ResumeGroupRequest(group="web"), timeout=5
        ),
    }
    for name, call in calls.items():
        assert _code(call).code() == grpc.StatusCode.PERMISSION_DENIED, name
    instance = _instance(running, "i-1")
    assert instance is not None and instance.state == agent_pb2.INSTANCE_STATE_CONFORMANT
    groups = bob.ListGroups(fleet_pb2.ListGroupsRequest(), timeout=5).groups
    assert [g.name for g in groups] == ["web"]
    assert running.requests(f"{FLEET}/TaintInstance", "PERMISSION_DENIED") == before + 1


def test_an_agent_cannot_call_the_fleet_service(running: TlsController) -> None:
    stub = fleet_pb2_grpc.FleetServiceStub(
        running.channel(channel_credentials(running.pki.files(Role.AGENT, "i-1")))
    )
    request = fleet_pb2.TaintInstanceRequest(instance_id="i-2", reason="neighbour")
    assert _code(lambda: stub.TaintInstance(request, timeout=5)).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_an_oversize_message_is_resource_exhausted(running: TlsController, baked: Baked) -> None:
    stub = running.agent("i-big")
    change = manifest_pb2.Change(path=b"/" + b"x" * MAX_MESSAGE)
    request = agent_pb2.ReportDriftRequest(
        header=baked.header(instance_id="i-big"), changes=[change]
    )
    assert _code(lambda: stub.ReportDrift(request, timeout=5)).code() == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert _instance(running, "i-big") is None


def test_the_operator_can_and_is_named_by_its_certificate_not_its_metadata(
    running: TlsController, baked: Baked
) -> None:
    alice = running.fleet(Role.OPERATOR, "alice")
    running.agent("i-2").Report(
        agent_pb2.ReportRequest(header=baked.header(instance_id="i-2")), timeout=5
    )
    request = fleet_pb2.TaintInstanceRequest(instance_id="i-2", reason="hand patch seen")
    tainted = alice.TaintInstance(
        request, timeout=5, metadata=(("corral-actor", "mallory@elsewhere"),)
    ).instance
    assert tainted.state == agent_pb2.INSTANCE_STATE_TAINTED
    assert tainted.taint.actor == "operator:alice"
    resumed = alice.ResumeGroup(fleet_pb2.ResumeGroupRequest(group="web"), timeout=5)
    assert resumed.group.name == "web"
    moved = alice.Rollout(fleet_pb2.RolloutRequest(group="web", image_ref=baked.ref), timeout=5)
    assert moved.group.desired_image_ref == baked.ref


def test_an_agent_over_its_rate_is_resource_exhausted_with_a_hint_and_counted(
    tmp_path: Path, pki: Pki, baked: Baked
) -> None:
    controller = TlsController(tmp_path / "data", pki, agent_rate=0.01, agent_burst=2)
    try:
        stub = controller.agent("i-1")
        # The group is not declared: FAILED_PRECONDITION, but each call spends a token.
        codes = []
        for seq in (1, 2, 3):
            request = agent_pb2.ReportRequest(header=baked.header(instance_id="i-1", seq=seq))
            codes.append(_code(functools.partial(stub.Report, request, timeout=5)))
        assert [e.code() for e in codes[:2]] == [grpc.StatusCode.FAILED_PRECONDITION] * 2
        limited = codes[2]
        assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        hint = dict(limited.trailing_metadata() or ()).get(RETRY_AFTER_METADATA)
        assert hint is not None and int(hint) > 1000
        assert controller.requests(f"{AGENT}/Report", "RESOURCE_EXHAUSTED") == 1
        # Another agent has its own bucket.
        other = controller.agent("i-2")
        error = _code(
            lambda: other.Report(
                agent_pb2.ReportRequest(header=baked.header(instance_id="i-2")), timeout=5
            )
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        controller.close()


def test_an_agent_detected_taint_names_the_verified_instance(
    running: TlsController, baked: Baked
) -> None:
    stub = running.agent("i-big")
    request = agent_pb2.ReportRequest(header=baked.header(instance_id="i-big", root=b"\x05" * 32))
    assert stub.Report(request, timeout=5).state == agent_pb2.INSTANCE_STATE_TAINTED
    alice = running.fleet(Role.OPERATOR, "alice")
    shown = alice.GetInstance(fleet_pb2.GetInstanceRequest(instance_id="i-big"), timeout=5)
    assert shown.instance.taint.actor == "agent:i-big"


def test_undecodable_bytes_are_rate_limited_like_any_refusal(tmp_path: Path, pki: Pki) -> None:
    controller = TlsController(tmp_path / "data", pki, agent_rate=0.01, agent_burst=2)
    try:
        files = pki.files(Role.AGENT, "i-1")
        channel = controller.channel(channel_credentials(files))
        call = channel.unary_unary(
            f"{AGENT}/Report", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        codes = [_code(lambda: call(b"\xff\xff\xff", timeout=5)).code() for _ in range(3)]
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2 + [
            grpc.StatusCode.RESOURCE_EXHAUSTED
        ]
        assert controller.requests(f"{AGENT}/Report", "INVALID_ARGUMENT") == 2
        assert controller.requests(f"{AGENT}/Report", "RESOURCE_EXHAUSTED") == 1
    finally:
        controller.close()


@pytest.mark.parametrize("stage", ["authorize", "require_instance", "identity_from_auth_context"])
def test_a_bug_while_admitting_a_call_is_internal_and_counted_never_unknown(
    tmp_path: Path, pki: Pki, baked: Baked, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the security edge")

    monkeypatch.setattr(interceptor, stage, broken)
    controller = TlsController(tmp_path / "data", pki)
    try:
        request = agent_pb2.ReportRequest(header=baked.header(instance_id="i-1"))
        error = _code(lambda: controller.agent("i-1").Report(request, timeout=5))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "a bug" not in (error.details() or "")  # no exception text on the wire
        assert controller.requests(f"{AGENT}/Report", "INTERNAL") == 1
        assert controller.requests(f"{AGENT}/Report", "UNKNOWN") == 0
    finally:
        controller.close()


def test_reflection_is_open_to_every_role_under_mtls(running: TlsController) -> None:
    files = running.pki.files(Role.AUDITOR, "bob")
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel(channel_credentials(files)))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    assert "corral.v1.AuditService" in {s.name for s in answer.list_services_response.service}
