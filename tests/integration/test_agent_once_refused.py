"""``corral-agent run --once`` as a process: a refused report exits 1, not 0.

A real gRPC server on 127.0.0.1 answers every report ``PERMISSION_DENIED``
(what the controller says to an agent reporting for another instance); the
agent logs the refusal and exits 1 after one call. The "never reached" exit
code (69) is covered on a fake clock in tests/unit/test_agent_once_exit.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from protos.corral.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


class RefusingAgentService(agent_pb2_grpc.AgentServiceServicer):
    """Refuses every report the way the controller refuses a foreign instance id."""

    def __init__(self) -> None:
        self.calls = 0

    def Report(
        self, request: agent_pb2.ReportRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportResponse:
        self.calls += 1
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent:i-1 may not report for i-2")

    def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportDriftResponse:
        self.calls += 1
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "agent:i-1 may not report for i-2")


@pytest.fixture
def refusing() -> Iterator[tuple[RefusingAgentService, str]]:
    servicer = RefusingAgentService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_a_refused_report_exits_1(
    refusing: tuple[RefusingAgentService, str], tmp_path: Path
) -> None:
    servicer, address = refusing
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    baked = _run("controller.cli.main", "bake", str(root), "--out", str(tmp_path / "image"),
                 "--name", "web", "--version", "1")  # fmt: skip
    assert baked.returncode == 0, baked.stderr
    done = _run(
        "agent.daemon.cli", "run", "--once", "--controller", address, "--root", str(root),
        "--image-json", str(tmp_path / "image" / "image.json"), "--instance-id", "i-2",
        "--data-dir", str(tmp_path / "state"), "--nice", str(os.nice(0)),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert servicer.calls == 1  # a refusal is an answer: it is not resent
    assert "PERMISSION_DENIED" in done.stderr
