"""Mutual TLS, identities, roles and abuse limits against a real gRPC server on loopback.

Certificates are real (issued by ``controller.security.certs``); the server is a
real ``grpc.aio`` server on 127.0.0.1:0 with the security interceptor and the
TLS port from ``controller.security.serving``. Its servicers are tiny in-test
implementations over a dict, so "nothing stored" is checked directly.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controller.demo.fleet import wait_for
from controller.security import certs
from controller.security.identity import Role
from controller.security.interceptor import RETRY_AFTER_METADATA, current_actor
from controller.security.ratelimit import Rate
from controller.security.serving import ServerSecurity, bind, server_interceptors
from controller.security.tls import TlsFiles, channel_credentials
from protos.corral.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, manifest_pb2

MAX_MESSAGE = 64 * 1024
AGENT_RATE = Rate(per_second=200.0, burst=200.0)
Context = grpc.aio.ServicerContext[object, object]


class Store:
    """What the in-test servicers record: reports by instance, and fleet actions."""

    def __init__(self) -> None:
        self.roots: dict[str, bytes] = {}
        self.actions: list[tuple[str, str]] = []  # (actor, what)


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def Report(
        self, request: agent_pb2.ReportRequest, context: Context
    ) -> agent_pb2.ReportResponse:
        self.store.roots[request.header.instance_id] = request.header.root
        return agent_pb2.ReportResponse(state=agent_pb2.INSTANCE_STATE_CONFORMANT)

    async def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: Context
    ) -> agent_pb2.ReportDriftResponse:
        self.store.roots[request.header.instance_id] = request.header.root
        return agent_pb2.ReportDriftResponse(state=agent_pb2.INSTANCE_STATE_TAINTED)


class FleetService(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def _record(self, what: str) -> None:
        self.store.actions.append((current_actor() or "?", what))

    async def RegisterImage(
        self, request_iterator: AsyncIterator[fleet_pb2.RegisterImageRequest], context: Context
    ) -> fleet_pb2.RegisterImageResponse:
        async for _ in request_iterator:
            pass
        self._record("register")
        return fleet_pb2.RegisterImageResponse(created=True)

    async def TaintInstance(
        self, request: fleet_pb2.TaintInstanceRequest, context: Context
    ) -> fleet_pb2.TaintInstanceResponse:
        self._record(f"taint {request.instance_id}")
        return fleet_pb2.TaintInstanceResponse()

    async def Rollout(
        self, request: fleet_pb2.RolloutRequest, context: Context
    ) -> fleet_pb2.RolloutResponse:
        self._record(f"rollout {request.group}")
        return fleet_pb2.RolloutResponse()

    async def ListInstances(
        self, request: fleet_pb2.ListInstancesRequest, context: Context
    ) -> fleet_pb2.ListInstancesResponse:
        return fleet_pb2.ListInstancesResponse()


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    out: Path

    def files(self, role: Role, name: str) -> TlsFiles:
        stem = self.out / f"{role}-{name}"
        return TlsFiles(str(self.out / "ca.pem"), f"{stem}.chain.crt", f"{stem}.key")


class RunningServer:
    """A grpc.aio server with the security interceptor, on its own loop in a thread."""

    def __init__(self, security: ServerSecurity) -> None:
        self.store = Store()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(security), self.loop).result(10)

    async def _start(self, security: ServerSecurity) -> int:
        self.server = grpc.aio.server(
            interceptors=server_interceptors(security),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(self.store), self.server)
        # The RPCs these tests make; the generated base answers the others UNIMPLEMENTED.
        fleet_service = FleetService(self.store)  # type: ignore[abstract]
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(fleet_service, self.server)
        port = bind(self.server, "127.0.0.1:0", security)
        await self.server.start()
        return port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    pki = Pki(ca=base / "ca", other_ca=base / "other", out=base / "out")
    certs.init_ca(pki.ca)
    certs.init_ca(pki.other_ca)
    certs.issue(pki.ca, Role.CONTROLLER, "c1", out=pki.out)
    for name in ("i-1", "i-2", "i-base", "i-normal", "i-flood"):
        certs.issue(pki.ca, Role.AGENT, name, out=pki.out)
    certs.issue(pki.ca, Role.OPERATOR, "alice", out=pki.out)
    certs.issue(pki.ca, Role.AUDITOR, "bob", out=pki.out)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    certs.issue(pki.ca, Role.AGENT, "i-expired", out=pki.out, not_after=past)
    certs.issue(pki.ca, Role.AGENT, "i-elsewhere", out=pki.out, trust_domain="elsewhere.test")
    certs.issue(pki.other_ca, Role.AGENT, "i-1", out=base / "foreign")
    return pki


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[RunningServer]:
    security = ServerSecurity(tls=pki.files(Role.CONTROLLER, "c1"), rates={Role.AGENT: AGENT_RATE})
    running = RunningServer(security)
    yield running
    running.stop()


def _channel(server: RunningServer, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{server.port}", credentials)


def _agent(server: RunningServer, files: TlsFiles) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(_channel(server, channel_credentials(files)))


def _fleet(server: RunningServer, files: TlsFiles) -> fleet_pb2_grpc.FleetServiceStub:
    return fleet_pb2_grpc.FleetServiceStub(_channel(server, channel_credentials(files)))


def _report(instance_id: str, root: bytes = b"\x01" * 32) -> agent_pb2.ReportRequest:
    return agent_pb2.ReportRequest(
        header=agent_pb2.ReportHeader(instance_id=instance_id, root=root)
    )


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_an_agent_reports_for_its_own_instance(server: RunningServer, pki: Pki) -> None:
    stub = _agent(server, pki.files(Role.AGENT, "i-1"))
    assert stub.Report(_report("i-1"), timeout=5).state == agent_pb2.INSTANCE_STATE_CONFORMANT
    assert server.store.roots["i-1"] == b"\x01" * 32


def test_an_agent_reporting_as_another_is_denied_and_nothing_is_stored(
    server: RunningServer, pki: Pki
) -> None:
    stub = _agent(server, pki.files(Role.AGENT, "i-1"))
    before = dict(server.store.roots)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Report(_report("i-2", b"\x09" * 32), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = caught.value.details()
    assert details is not None and "agent:i-1 may not report for instance 'i-2'" in details
    drift = agent_pb2.ReportDriftRequest(header=_report("i-2").header)
    assert _code(lambda: stub.ReportDrift(drift, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert server.store.roots == before


def test_no_client_certificate_is_rejected(server: RunningServer, pki: Pki) -> None:
    anonymous = grpc.ssl_channel_credentials(root_certificates=(pki.out / "ca.pem").read_bytes())
    stub = agent_pb2_grpc.AgentServiceStub(_channel(server, anonymous))
    before = dict(server.store.roots)
    assert _code(lambda: stub.Report(_report("i-1"), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert server.store.roots == before


def test_a_plaintext_client_is_rejected(server: RunningServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    assert _code(lambda: stub.Report(_report("i-1"), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_rejected(server: RunningServer, pki: Pki) -> None:
    foreign = pki.out.parent / "foreign"
    files = TlsFiles(
        str(pki.out / "ca.pem"),
        str(foreign / "agent-i-1.chain.crt"),
        str(foreign / "agent-i-1.key"),
    )
    stub = _agent(server, files)
    before = dict(server.store.roots)
    assert _code(lambda: stub.Report(_report("i-1"), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert server.store.roots == before


def test_an_expired_certificate_is_rejected(server: RunningServer, pki: Pki) -> None:
    stub = _agent(server, pki.files(Role.AGENT, "i-expired"))
    assert _code(lambda: stub.Report(_report("i-expired"), timeout=5)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert "i-expired" not in server.store.roots


def test_a_valid_certificate_without_a_corral_identity_is_unauthenticated(
    server: RunningServer, pki: Pki
) -> None:
    stub = _agent(server, pki.files(Role.AGENT, "i-elsewhere"))
    code = _code(lambda: stub.Report(_report("i-elsewhere"), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "i-elsewhere" not in server.store.roots


def _register() -> Iterator[fleet_pb2.RegisterImageRequest]:
    yield fleet_pb2.RegisterImageRequest(image=fleet_pb2.Image(name="web"), manifest_chunk=b"m")
    yield fleet_pb2.RegisterImageRequest(manifest_chunk=b"more")


def test_an_auditor_reads_but_cannot_register_taint_or_roll_out(
    server: RunningServer, pki: Pki
) -> None:
    stub = _fleet(server, pki.files(Role.AUDITOR, "bob"))
    stub.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
    before = list(server.store.actions)
    calls = [
        lambda: stub.RegisterImage(_register(), timeout=5),
        lambda: stub.TaintInstance(fleet_pb2.TaintInstanceRequest(instance_id="i-1"), timeout=5),
        lambda: stub.Rollout(fleet_pb2.RolloutRequest(group="web"), timeout=5),
    ]
    for call in calls:
        assert _code(call) == grpc.StatusCode.PERMISSION_DENIED
    assert server.store.actions == before


def test_an_operator_can_and_is_named_as_the_actor(server: RunningServer, pki: Pki) -> None:
    stub = _fleet(server, pki.files(Role.OPERATOR, "alice"))
    stub.RegisterImage(_register(), timeout=5)
    stub.TaintInstance(fleet_pb2.TaintInstanceRequest(instance_id="i-1"), timeout=5)
    stub.Rollout(fleet_pb2.RolloutRequest(group="web"), timeout=5)
    stub.ListInstances(fleet_pb2.ListInstancesRequest(), timeout=5)
    assert server.store.actions[-3:] == [
        ("operator:alice", "register"),
        ("operator:alice", "taint i-1"),
        ("operator:alice", "rollout web"),
    ]


def test_an_agent_cannot_call_the_fleet_service(server: RunningServer, pki: Pki) -> None:
    stub = _fleet(server, pki.files(Role.AGENT, "i-1"))
    code = _code(lambda: stub.TaintInstance(fleet_pb2.TaintInstanceRequest(), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_an_oversize_message_is_resource_exhausted(server: RunningServer, pki: Pki) -> None:
    stub = _agent(server, pki.files(Role.AGENT, "i-2"))
    change = manifest_pb2.Change(path=b"/" + b"x" * MAX_MESSAGE)
    request = agent_pb2.ReportDriftRequest(header=_report("i-2").header, changes=[change])
    assert _code(lambda: stub.ReportDrift(request, timeout=5)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "i-2" not in server.store.roots


def test_a_flood_from_one_agent_does_not_refuse_the_others(server: RunningServer, pki: Pki) -> None:
    """While one identity floods and is refused, another identity's every call still succeeds.

    How much the flood slows the others is measured by no test here (timings
    belong in tests/bench/); what is checked is that the limit is per identity.
    """
    stop = threading.Event()
    codes: dict[str, int] = {}
    lock = threading.Lock()
    retry_hints: list[str | bytes] = []

    def flood() -> None:
        stub = _agent(server, pki.files(Role.AGENT, "i-flood"))
        while not stop.is_set():
            try:
                stub.Report(_report("i-flood"), timeout=5)
                name = "OK"
            except grpc.RpcError as exc:
                name = exc.code().name
                assert isinstance(exc, grpc.Call)  # a failed client call's error is that call
                hint = dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_METADATA)
                if hint and len(retry_hints) < 3:
                    retry_hints.append(hint)
            with lock:
                codes[name] = codes.get(name, 0) + 1

    flooders = [threading.Thread(target=flood) for _ in range(3)]
    for thread in flooders:
        thread.start()
    try:
        assert wait_for(lambda: codes.get("RESOURCE_EXHAUSTED", 0) > 0, timeout=20)
        normal = _agent(server, pki.files(Role.AGENT, "i-normal"))
        for _ in range(100):  # each raises if refused
            normal.Report(_report("i-normal"), timeout=5)
    finally:
        stop.set()
        for thread in flooders:
            thread.join(10)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert retry_hints and all(int(hint) > 0 for hint in retry_hints)


def test_the_server_certificate_is_reloaded_without_restart(tmp_path: Path, pki: Pki) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for name in ("controller-c1.chain.crt", "controller-c1.key", "ca.pem"):
        shutil.copy(pki.out / name, live / name)
    files = TlsFiles(
        str(live / "ca.pem"), str(live / "controller-c1.chain.crt"), str(live / "controller-c1.key")
    )
    running = RunningServer(ServerSecurity(tls=files))
    try:
        # A client that trusts only a new CA cannot talk to the server yet.
        new_ca = tmp_path / "new-ca"
        certs.init_ca(new_ca)
        rotated = certs.issue(new_ca, Role.CONTROLLER, "c1", out=tmp_path / "rotated")
        agent = pki.files(Role.AGENT, "i-1")
        trusting_new = grpc.ssl_channel_credentials(
            root_certificates=rotated.ca.read_bytes(),
            private_key=Path(agent.key_file).read_bytes(),
            certificate_chain=Path(agent.cert_file).read_bytes(),
        )
        stub = agent_pb2_grpc.AgentServiceStub(_channel(running, trusting_new))
        assert _code(lambda: stub.Report(_report("i-1"), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        # Rotate the server's certificate and key in place; no restart.
        shutil.copy(rotated.chain, live / "controller-c1.chain.crt")
        shutil.copy(rotated.key, live / "controller-c1.key")
        fresh = agent_pb2_grpc.AgentServiceStub(_channel(running, trusting_new))
        assert fresh.Report(_report("i-1"), timeout=5).state == agent_pb2.INSTANCE_STATE_CONFORMANT
    finally:
        running.stop()
