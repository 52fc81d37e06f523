"""Agent footprint benchmark: steady-state RSS while watching a 100,000-file root.

Generates an image-like tree (``treegen.py``), bakes its manifest, serves a tiny
``AgentService`` in this process that accepts every report, and runs
``corral-agent run`` as a separate process scanning every few seconds. After
the first (full) scan and several incremental ones it prints the agent's RSS,
its peak RSS, its scan times, the import floor of the same libraries and the
ratio to the 80 MB target. Not a pass/fail test.

    python tests/bench/bench_agent_rss.py [--files 100000] [--reports 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.image.bake import bake
from agent.manifest.policy import Policy
from protos.corral.v1 import agent_pb2, agent_pb2_grpc
from tests.bench.treegen import generate

POLICY = Policy(include=("/",), exclude=("/var/lib/corral-agent",))

REPO = Path(__file__).resolve().parents[2]
TARGET_MB = 80.0
MB = 1024 * 1024


class CountingService(agent_pb2_grpc.AgentServiceServicer):
    """Accepts every report and remembers when it came and what the agent said it used."""

    def __init__(self) -> None:
        self.headers: list[agent_pb2.ReportHeader] = []
        self.drifts = 0
        self.arrived = threading.Condition()

    def _note(self, header: agent_pb2.ReportHeader) -> None:
        with self.arrived:
            self.headers.append(header)
            self.arrived.notify_all()

    def Report(
        self, request: agent_pb2.ReportRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportResponse:
        self._note(request.header)
        return agent_pb2.ReportResponse(state=agent_pb2.INSTANCE_STATE_CONFORMANT)

    def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportDriftResponse:
        self.drifts += 1
        self._note(request.header)
        return agent_pb2.ReportDriftResponse(state=agent_pb2.INSTANCE_STATE_TAINTED)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.headers) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.arrived.wait(left)
        return True


def import_floor() -> float:
    """RSS of a bare interpreter that imports what the agent imports, in MB."""
    code = (
        "import grpc, google.protobuf, prometheus_client, psutil, apscheduler.schedulers.background"
        ";from protos.corral.v1 import agent_pb2_grpc"
        ";print(psutil.Process().memory_info().rss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return int(done.stdout) / MB


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape_scan_seconds(port: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of corral_agent_scan_duration_seconds by mode, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[float]] = {"full": [0.0, 0.0], "incremental": [0.0, 0.0]}
    for line in text.splitlines():
        for mode, slot in found.items():
            prefix = f'corral_agent_scan_duration_seconds_%s{{mode="{mode}"}} '
            if line.startswith(prefix % "sum"):
                slot[0] = float(line.split()[-1])
            elif line.startswith(prefix % "count"):
                slot[1] = float(line.split()[-1])
    return {mode: (total, count) for mode, (total, count) in found.items()}


def peak_rss(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--reports", type=int, default=5, help="reports to wait for")
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=0, help="agent hashing processes")
    parser.add_argument("--keep", type=Path, help="reuse/keep the generated tree here")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="corral-bench-rss-"))
    root, image_dir, state = work / "root", work / "image", work / "state"
    if not root.exists():
        started = time.monotonic()
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        stats = generate(root / "usr", files=args.files)
        print(
            f"tree: {stats.files} files, {stats.total_bytes / MB:.0f} MB "
            f"({time.monotonic() - started:.1f} s to generate)"
        )
    if image_dir.exists():
        shutil.rmtree(image_dir)
    shutil.rmtree(state, ignore_errors=True)
    started = time.monotonic()
    image = bake(str(root), str(image_dir), policy=POLICY, name="bench", version="1").image
    print(f"baked {image['entry_count']} entries in {time.monotonic() - started:.1f} s")

    service = CountingService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    metrics_port = free_port()
    command = [
        sys.executable, "-m", "agent.daemon.cli", "run",
        "--controller", f"127.0.0.1:{port}",
        "--root", str(root),
        "--image-json", str(image_dir / "image.json"),
        "--data-dir", str(state),
        "--interval", str(args.interval), "--jitter", "0",
        "--full-rehash-every", "1000",
        "--workers", str(args.workers),
        "--nice", str(os.nice(0)), "--log-level", "WARNING",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    agent = subprocess.Popen(command, cwd=REPO)
    process = psutil.Process(agent.pid)
    samples: list[float] = []
    tree_peak = [0.0, 0.0]  # the agent alone, the agent plus its scan child
    sampling = threading.Event()

    def sample_tree() -> None:
        while not sampling.wait(0.02):
            try:
                own = process.memory_info().rss
                children = sum(c.memory_info().rss for c in process.children(recursive=True))
            except psutil.Error:
                continue
            tree_peak[0] = max(tree_peak[0], own / MB)
            tree_peak[1] = max(tree_peak[1], (own + children) / MB)

    sampler = threading.Thread(target=sample_tree, daemon=True)
    sampler.start()
    try:
        started = time.monotonic()
        if not service.wait_for(1, timeout=1800):
            print("the agent sent no report", file=sys.stderr)
            return 1
        first_scan = time.monotonic() - started
        for count in range(2, args.reports + 1):
            if not service.wait_for(count, timeout=600):
                print(f"the agent stopped reporting after {count - 1}", file=sys.stderr)
                return 1
            children = sum(c.memory_info().rss for c in process.children(recursive=True))
            samples.append((process.memory_info().rss + children) / MB)
        peak = peak_rss(agent.pid)
        scan_seconds = scrape_scan_seconds(metrics_port)
        stopping = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
        stopped = time.monotonic() - stopping
    finally:
        sampling.set()
        if agent.poll() is None:
            agent.kill()
        server.stop(grace=None)
    headers = service.headers
    steady = max(samples[1:] or samples)
    reported = headers[-1].footprint.rss_bytes / MB
    print(f"reports: {len(headers)} ({service.drifts} with drift evidence, expected 0)")
    print(f"first report after {first_scan:.1f} s (full scan + start-up)")
    print(f"agent RSS steady state: {steady:.1f} MB (agent's own report: {reported:.1f} MB)")
    print(f"agent RSS peak (VmHWM): {peak:.1f} MB")
    print(f"peak during a scan, agent + its scan process: {tree_peak[1]:.1f} MB (sampled)")
    for mode, (total, scans) in scan_seconds.items():
        if scans:
            print(f"{mode} scans: {scans}, {total / scans:.2f} s each on average")
    print(
        f"import floor (python+grpc+protobuf+prometheus-client+apscheduler): "
        f"{import_floor():.1f} MB"
    )
    print(f"steady RSS / target ({TARGET_MB:.0f} MB): {steady / TARGET_MB:.2f}")
    print(
        f"CPU used by the agent and its scans: {headers[-1].footprint.cpu_millis / 1000:.1f} s "
        f"over {len(headers)} scans"
    )
    print(f"SIGTERM → exit {code} in {stopped:.2f} s")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
