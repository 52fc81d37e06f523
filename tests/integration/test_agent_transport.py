"""The agent's gRPC transport against real servers on loopback.

Each test runs a tiny ``AgentService`` servicer written here (not the real
controller) on 127.0.0.1:0, so the agent's retry policy, deadlines and status
mapping are checked against real gRPC behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from agent.daemon.report import InstanceState, PendingReport
from agent.daemon.transport import GrpcTransport
from agent.errors import ReportRejectedError, RetryableError
from agent.image.bake import bake
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryType
from agent.manifest.policy import Policy
from agent.manifest.report import Evidence, Footprint, Report
from controller.demo.fleet import wait_for
from protos.corral.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


class FakeAgentService(agent_pb2_grpc.AgentServiceServicer):
    """Fails the first ``fail_first`` calls with ``code``, optionally sleeps, then accepts."""

    def __init__(
        self,
        *,
        fail_first: int = 0,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        sleep: float = 0.0,
    ) -> None:
        self.fail_first = fail_first
        self.code = code
        self.sleep = sleep
        self.calls = 0
        self.reports: list[agent_pb2.ReportRequest] = []
        self.drifts: list[agent_pb2.ReportDriftRequest] = []
        self.lock = threading.Lock()

    def _gate(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.fail_first
        if failing:
            context.abort(self.code, "not now")
        if self.sleep:
            time.sleep(self.sleep)

    def Report(
        self, request: agent_pb2.ReportRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportResponse:
        self._gate(context)
        self.reports.append(request)
        return agent_pb2.ReportResponse(state=agent_pb2.INSTANCE_STATE_CONFORMANT)

    def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportDriftResponse:
        self._gate(context)
        self.drifts.append(request)
        return agent_pb2.ReportDriftResponse(state=agent_pb2.INSTANCE_STATE_TAINTED)


def start(servicer: FakeAgentService) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


# Serves a servicer on loopback and returns its address; the fixture stops every server.
Serve = Callable[[FakeAgentService], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[grpc.Server] = []

    def run(servicer: FakeAgentService) -> str:
        server, address = start(servicer)
        servers.append(server)
        return address

    yield run
    for server in servers:
        server.stop(grace=None)


def header(seq: int = 1) -> Report:
    return Report(
        instance_id="i-0123456789abcdef0",
        group="web",
        image_ref="registry.example.com/web@sha256:" + "a" * 64,
        image_digest="sha256:" + "a" * 64,
        root=bytes(32),
        seq=seq,
        boot_id="8a7c0f64-3d2e-4a53-9e0b-1f2a3b4c5d6e",
        scanned_at_ms=1_800_000_000_000,
        footprint=Footprint(rss_bytes=50 << 20, cpu_millis=1500),
        agent_version="0.1.0",
    )


def test_unavailable_is_retried_by_the_channel_itself(serve: Serve) -> None:
    servicer = FakeAgentService(fail_first=2)
    transport = GrpcTransport(serve(servicer), deadline=5.0, agent_version="t")
    try:
        delivery = transport.deliver(PendingReport(header()))
    finally:
        transport.close()
    assert delivery.state is InstanceState.CONFORMANT
    assert servicer.calls == 3 and len(servicer.reports) == 1
    assert servicer.reports[0].header.instance_id == "i-0123456789abcdef0"


def test_a_longer_outage_is_retryable_then_the_report_is_delivered(serve: Serve) -> None:
    servicer = FakeAgentService(fail_first=6)
    transport = GrpcTransport(serve(servicer), deadline=5.0, agent_version="t")
    try:
        with pytest.raises(RetryableError, match="UNAVAILABLE"):
            transport.deliver(PendingReport(header()))
        delivery = transport.deliver(PendingReport(header()))
    finally:
        transport.close()
    assert delivery.state is InstanceState.CONFORMANT
    assert len(servicer.reports) == 1


def test_a_slow_controller_hits_the_deadline_and_is_retryable(serve: Serve) -> None:
    servicer = FakeAgentService(sleep=1.0)
    transport = GrpcTransport(serve(servicer), deadline=0.2, agent_version="t")
    started = time.monotonic()
    try:
        with pytest.raises(RetryableError, match="DEADLINE_EXCEEDED"):
            transport.deliver(PendingReport(header()))
    finally:
        transport.close()
    assert time.monotonic() - started < 0.9


def test_nobody_listening_is_retryable(tmp_path: Path) -> None:
    transport = GrpcTransport("127.0.0.1:1", deadline=0.5, agent_version="t")
    try:
        with pytest.raises(RetryableError):
            transport.deliver(PendingReport(header()))
    finally:
        transport.close()


def test_a_refusal_is_not_retried_and_names_the_code(serve: Serve) -> None:
    servicer = FakeAgentService(fail_first=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    transport = GrpcTransport(serve(servicer), deadline=5.0, agent_version="t")
    try:
        with pytest.raises(ReportRejectedError) as caught:
            transport.deliver(PendingReport(header()))
    finally:
        transport.close()
    assert caught.value.code == "INVALID_ARGUMENT" and servicer.calls == 1


def test_a_seq_conflict_is_a_refusal(serve: Serve) -> None:
    servicer = FakeAgentService(fail_first=1, code=grpc.StatusCode.ALREADY_EXISTS)
    transport = GrpcTransport(serve(servicer), deadline=5.0, agent_version="t")
    try:
        with pytest.raises(ReportRejectedError) as caught:
            transport.deliver(PendingReport(header()))
    finally:
        transport.close()
    assert caught.value.code == "ALREADY_EXISTS"


def test_drift_evidence_reaches_the_controller(serve: Serve) -> None:
    servicer = FakeAgentService()
    transport = GrpcTransport(serve(servicer), deadline=5.0, agent_version="t")
    entry = Entry(b"/etc/motd", EntryType.REGULAR, 0o644, 0, 0, 6, b"\x01" * 32)
    evidence = Evidence(
        changes=(
            Change(ChangeKind.MODIFIED, b"/etc/motd", entry, ("content",)),
            Change(ChangeKind.REMOVED, b"/etc/\xffname", None),
        ),
        truncated=True,
        total_changes=7,
    )
    try:
        delivery = transport.deliver(PendingReport(header(), evidence))
    finally:
        transport.close()
    assert delivery.state is InstanceState.TAINTED
    [request] = servicer.drifts
    assert [c.path for c in request.changes] == [b"/etc/motd", b"/etc/\xffname"]
    assert request.changes[0].entry.sha256 == b"\x01" * 32
    assert list(request.changes[0].attributes) == ["content"]
    assert not request.changes[1].HasField("entry")
    assert request.truncated and request.total_changes == 7


def test_the_agent_process_delivers_once_the_controller_recovers(
    serve: Serve,
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc" / "motd").write_text("hello\n")
    bake(str(root), str(tmp_path / "image"), policy=Policy(), name="demo")
    servicer = FakeAgentService(fail_first=5)  # more than one call's channel retries
    address = serve(servicer)
    command = [
        sys.executable,
        "-m",
        "agent.daemon.cli",
        "run",
        "--once",
        "--controller",
        address,
        "--root",
        str(root),
        "--image-json",
        str(tmp_path / "image" / "image.json"),
        "--group",
        "web",
        "--data-dir",
        str(tmp_path / "state"),
        "--nice",
        str(os.nice(0)),
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    [request] = servicer.reports
    assert request.header.instance_id == "0123456789abcdef0123456789abcdef"
    assert request.header.group == "web"
    assert len(request.header.root) == 32
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(line["message"] == "scan done" for line in lines)
    assert all(line.get("instance_id") == request.header.instance_id for line in lines)


def _agent_command(address: str, tmp_path: Path, *extra: str) -> list[str]:
    root = tmp_path / "root"
    if not root.exists():
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "machine-id").write_text("fedcba9876543210fedcba9876543210\n")
        (root / "etc" / "motd").write_text("hello\n")
        bake(str(root), str(tmp_path / "image"), policy=Policy(), name="demo")
    return [
        sys.executable, "-m", "agent.daemon.cli", "run",
        "--controller", address,
        "--root", str(root),
        "--image-json", str(tmp_path / "image" / "image.json"),
        "--data-dir", str(tmp_path / "state"),
        "--nice", str(os.nice(0)),
        "--interval", "30",
        *extra,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_agent_started_before_its_controller_delivers_once_it_is_up(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "agent.log"
    with log.open("wb") as sink:
        agent = subprocess.Popen(
            _agent_command(f"127.0.0.1:{port}", tmp_path), cwd=REPO, stderr=sink
        )
    try:
        # The agent scans and fails to deliver at least once.
        unreachable = lambda: b"controller unreachable" in log.read_bytes()  # noqa: E731
        assert wait_for(unreachable, timeout=30), log.read_text()
        servicer = FakeAgentService()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
        assert server.add_insecure_port(f"127.0.0.1:{port}") == port
        server.start()
        try:
            wait_for(lambda: bool(servicer.reports), timeout=20)
        finally:
            server.stop(grace=None)
        # Delivered once the controller is up (a later scan may have reported again
        # before the server stopped; that is not a duplicate of the queued one).
        assert servicer.reports, log.read_text()
        assert servicer.reports[0].header.instance_id == "fedcba9876543210fedcba9876543210"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
    assert agent.returncode == 0, log.read_text()


def test_sigterm_stops_a_running_agent_cleanly(serve: Serve, tmp_path: Path) -> None:
    servicer = FakeAgentService()
    agent = subprocess.Popen(
        _agent_command(serve(servicer), tmp_path), cwd=REPO, stderr=subprocess.PIPE
    )
    try:
        assert wait_for(lambda: bool(servicer.reports), timeout=20)
        agent.send_signal(signal.SIGTERM)
        # Within 20 s although the next scan is 30 s away: SIGTERM does not wait for it.
        _out, err = agent.communicate(timeout=20)
    finally:
        if agent.poll() is None:  # the test failed before the agent stopped: leave none behind
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err.decode()
    assert len(servicer.reports) == 1
    assert b"stopping on SIGTERM" in err
