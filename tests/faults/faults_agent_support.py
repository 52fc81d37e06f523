"""Pieces of the agent's fault tests: a real agent process, its files, and a scripted controller.

:class:`AgentProcess` runs ``corral-agent run`` (the real CLI, its own
session) against a controller address, with its log in a file and its
metrics on a free port, and can be stopped with SIGTERM or SIGKILL by PID and
started again on the same data directory. :class:`ScriptedController` is a
small in-test ``AgentService`` that answers chosen status codes, for the
answers a real controller gives only under faults. Everything waits on
conditions (:func:`wait_until`), never on fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from agent.daemon.outbox_file import FILE_NAME, DamagedOutboxError, decode
from agent.daemon.report import PendingReport
from agent.image.artifact import build_artifact
from agent.manifest.policy import Policy
from controller.demo import fleet as demo_support
from protos.corral.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, log: str = "") -> None:
    """Poll ``predicate`` until true; fail naming ``what`` (and a log tail) after ``timeout``."""
    if not demo_support.wait_for(predicate, timeout=timeout, step=0.05):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log[-4000:]}")


def outbox_on_disk(data_dir: Path) -> list[PendingReport] | None:
    """The reports in the agent's outbox file (None: no file, or caught mid-replace)."""
    try:
        return decode((data_dir / FILE_NAME).read_bytes())
    except (FileNotFoundError, DamagedOutboxError):
        return None


def holds_drift(data_dir: Path, path: bytes) -> bool:
    reports = outbox_on_disk(data_dir) or []
    return any(
        report.evidence is not None and any(c.path == path for c in report.evidence.changes)
        for report in reports
    )


@dataclass
class AgentProcess:
    """``corral-agent run`` as a process, restartable on the same data directory."""

    controller: str
    root: Path
    image_json: Path
    data_dir: Path
    instance_id: str
    interval: float = 1.0
    log_path: Path = field(init=False)
    metrics_port: int = field(init=False, default=0)
    process: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.instance_id}.agent.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.metrics_port = demo_support.free_port()
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.daemon.cli", "run",
                 "--controller", self.controller,
                 "--root", str(self.root),
                 "--image-json", str(self.image_json),
                 "--instance-id", self.instance_id,
                 "--group", "faults",
                 "--data-dir", str(self.data_dir),
                 "--interval", str(self.interval),
                 "--jitter", "0",
                 "--deadline", "2",
                 "--nice", str(os.nice(0)),
                 "--metrics-listen", f"127.0.0.1:{self.metrics_port}"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, *, timeout: float = 20.0) -> int:
        """SIGTERM (by PID); returns the exit code."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        """Teardown: SIGTERM then SIGKILL if it lingers (only our own process)."""
        if self.process is not None and self.process.poll() is None:
            demo_support.stop_process(self.process)

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample from the agent's /metrics (None while it is not serving)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


def instance_root(source: Path, target: Path) -> Path:
    """A copy of a baked sample root for one agent to watch."""
    shutil.copytree(source, target, symlinks=True)
    return target


class ScriptedController(agent_pb2_grpc.AgentServiceServicer):
    """Answers ``code`` to the calls ``failing`` picks; accepts (and records) the rest."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failing: Callable[[str, agent_pb2.ReportHeader], grpc.StatusCode | None] = (
            lambda _method, _header: None
        )
        self.accepted: list[tuple[str, agent_pb2.ReportHeader, list[bytes]]] = []
        self.answered: list[tuple[str, int, str]] = []
        """(method, seq, code name) of every call, in order."""

    def _handle(
        self, method: str, header: agent_pb2.ReportHeader, paths: list[bytes], context: object
    ) -> None:
        code = self.failing(method, header)
        with self.lock:
            self.answered.append((method, header.seq, "OK" if code is None else code.name))
            if code is None:
                self.accepted.append((method, header, paths))
        if code is not None:
            assert isinstance(context, grpc.ServicerContext)
            context.abort(code, f"scripted {code.name}")

    def Report(
        self, request: agent_pb2.ReportRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportResponse:
        self._handle("Report", request.header, [], context)
        return agent_pb2.ReportResponse(state=agent_pb2.INSTANCE_STATE_CONFORMANT)

    def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportDriftResponse:
        paths = [change.path for change in request.changes]
        self._handle("ReportDrift", request.header, paths, context)
        return agent_pb2.ReportDriftResponse(state=agent_pb2.INSTANCE_STATE_TAINTED)

    def drifts_accepted(self) -> list[tuple[agent_pb2.ReportHeader, list[bytes]]]:
        with self.lock:
            return [(h, p) for m, h, p in self.accepted if m == "ReportDrift"]

    def calls(self) -> list[tuple[str, int, str]]:
        with self.lock:
            return list(self.answered)


def serve(servicer: ScriptedController) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def baked_sample(tmp_path: Path) -> tuple[Path, Path]:
    """A small sample root and its bake output (``image.json`` + ``manifest.pb``)."""
    source = tmp_path / "sample-root"
    demo_support.write_sample_root(source, files=5)
    out = tmp_path / "image"
    build_artifact(
        str(source), str(out), name="app", version="1", policy=Policy(),
        owner=(os.getuid(), os.getgid()),
    )  # fmt: skip
    return source, out / "image.json"
