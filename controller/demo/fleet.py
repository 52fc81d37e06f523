"""The pieces ``corral demo`` puts together: a sample root, a controller process, its stopping.

Everything started here is recorded by PID and stopped by PID: the controller
(SIGTERM, then SIGKILL) and every local instance's agent (through the local
provider's own checked stop, which never signals a recycled PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.providers.agentproc import AgentProcesses
from controller.providers.local import INSTANCE_FILE

APP_CONF = "etc/app.conf"


def write_sample_root(root: Path, *, files: int = 30) -> None:
    """A small image tree: a config file, a program and some shared data."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    share = root / "usr/share/app"
    share.mkdir(parents=True, exist_ok=True)
    (root / "var/lib/app").mkdir(parents=True, exist_ok=True)
    (root / APP_CONF).write_text("listen = 0.0.0.0:8080\nworkers = 4\nlog_level = info\n")
    (root / "etc/hostname").write_text("demo\n")
    program = root / "usr/bin/app"
    program.write_text("#!/bin/sh\n# the demo application\nexec sleep infinity\n")
    program.chmod(0o755)
    for n in range(files):
        (share / f"data-{n:02d}.txt").write_text(f"shared data file {n}\n" * (n + 1))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class DemoSettings:
    """The demo controller's short intervals (a production controller uses the defaults)."""

    scan_interval: float = 1.0
    replacer_interval: float = 0.5
    startup_grace: float = 30.0
    backoff_base: float = 2.0


def write_config(data_dir: Path, *, grpc_port: int, metrics_port: int, s: DemoSettings) -> Path:
    path = data_dir / "controller.toml"
    path.write_text(
        "\n".join(
            (
                f'listen = "127.0.0.1:{grpc_port}"',
                f'metrics_listen = "127.0.0.1:{metrics_port}"',
                f"data_dir = {json.dumps(str(data_dir))}",
                f"report_interval = {s.scan_interval}",
                "sweep_interval = 1",
                "flush_interval = 0.5",
                f"replacer_interval = {s.replacer_interval}",
                f"startup_grace = {s.startup_grace}",
                f"backoff_base = {s.backoff_base}",
                "",
                "[providers.local]",
                f"data_dir = {json.dumps(str(data_dir))}",
                f"interval = {s.scan_interval}",
                "",
            )
        )
    )
    return path


def start_controller(data_dir: Path, config: Path) -> subprocess.Popen[bytes]:
    """``corral-controller serve`` in its own session, logging to DATA/controller.log."""
    with open(data_dir / "controller.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "controller.cli.serve", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM ``process`` (by PID), wait, then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def stop_agents(data_dir: Path, *, timeout: float = 5.0) -> int:
    """Stop every instance agent recorded under DATA/instances (by PID); returns how many."""
    processes = AgentProcesses()
    stopped = 0
    instances = data_dir / "instances"
    if not instances.is_dir():
        return 0
    for entry in sorted(instances.iterdir()):
        try:
            document = json.loads((entry / INSTANCE_FILE).read_text())
        except (OSError, ValueError):
            continue
        marker = str(entry / "rootfs")
        pid = document.get("pid")
        for candidate in (pid, processes.find(marker)):
            if isinstance(candidate, int) and processes.is_running(candidate, marker):
                processes.stop(candidate, marker, timeout=timeout)
                stopped += 1
    return stopped


def wait_for(predicate: Callable[[], bool], *, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
