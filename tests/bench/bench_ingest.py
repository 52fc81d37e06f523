"""Ingest benchmark: steady-state agent reports/s and p99 against a real controller.

Runs, in one go: a bare ``grpc.aio`` server answering the same Report RPC with no
work (the baseline), then ``corral-controller serve`` with SQLite, each in its own
process, each loaded by a generator in another process simulating N agents with
distinct instance ids. Prints both rates, p99 latencies, the server's CPU time per
report and the ratios, for several rounds run alternately (the machine may be
shared), and the medians.

    python tests/bench/bench_ingest.py [--agents 2000] [--seconds 10] [--inflight 64]
                                       [--rounds 3] [--tree NAME=DIR ...]

``--tree NAME=DIR`` also runs, in every round, the controller of another source
tree (e.g. an earlier commit unpacked with ``git archive REV | tar -x -C DIR``)
and prints its controller/bare ratio and how much lower this tree's is: the
cost of a change measured in the same run, against the same bare baseline.

``CORRAL_*`` variables in the environment reach the controller, e.g.
``CORRAL_REPLACER_INTERVAL=3600`` leaves the replacement engine's periodic pass idle
so the ingest path is measured alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
import psutil

from protos.corral.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.fixtures.baked import ENTRIES, Baked

ROOT = Path(__file__).resolve().parents[2]
BENCH = Baked("bench", entries=ENTRIES[1:2])


def steady_request(index: int, seq: int) -> agent_pb2.ReportRequest:
    """A realistic steady-state report (every field set to a typical value)."""
    return agent_pb2.ReportRequest(
        header=agent_pb2.ReportHeader(
            instance_id=f"i-{index:017x}",
            group="bench",
            image_ref=BENCH.ref,
            image_digest=BENCH.digest,
            root=BENCH.manifest.root,
            seq=seq,
            boot_id="3f1c2a9e-5d7b-4c1a-9e0f-2b6d8a4c7e11",
            scanned_at_ms=int(time.time() * 1000),
            footprint=agent_pb2.AgentFootprint(rss_bytes=48_000_000, cpu_millis=123_456),
            agent_version="0.1.0",
        )
    )


# The baseline: a bare grpc.aio server answering Report with a constant response.


async def _echo_server(port: int) -> None:
    class Echo(agent_pb2_grpc.AgentServiceServicer):
        async def Report(
            self,
            request: agent_pb2.ReportRequest,
            context: grpc.aio.ServicerContext[agent_pb2.ReportRequest, agent_pb2.ReportResponse],
        ) -> agent_pb2.ReportResponse:
            return agent_pb2.ReportResponse(state=agent_pb2.INSTANCE_STATE_CONFORMANT)

    server = grpc.aio.server()
    # Only Report is called; the generated base answers ReportDrift UNIMPLEMENTED.
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Echo(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# The load generator (runs in its own process).


async def _load(
    port: int,
    agents: int,
    seconds: float,
    inflight: int,
    out: dict[str, float],
    queue: multiprocessing.Queue[dict[str, float]],
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        seqs = [0] * agents
        # Warm-up: every agent's first report creates its instance.
        for start in range(0, agents, inflight):
            batch = range(start, min(agents, start + inflight))
            for i in batch:
                seqs[i] = 1
            await asyncio.gather(*(stub.Report(steady_request(i, 1), timeout=10) for i in batch))
        latencies: list[float] = []
        queue.put({"warm": 1.0})
        deadline = time.perf_counter() + seconds
        next_agent = 0

        async def worker() -> None:
            nonlocal next_agent
            while time.perf_counter() < deadline:
                i = next_agent
                next_agent = (next_agent + 1) % agents
                seqs[i] += 1
                started = time.perf_counter()
                await stub.Report(steady_request(i, seqs[i]), timeout=10)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    out["count"] = len(latencies)
    out["rate"] = len(latencies) / elapsed
    out["p50"] = latencies[len(latencies) // 2]
    out["p99"] = latencies[int(len(latencies) * 0.99)]


def _load_process(
    port: int,
    agents: int,
    seconds: float,
    inflight: int,
    queue: multiprocessing.Queue[dict[str, float]],
) -> None:
    out: dict[str, float] = {}
    asyncio.run(_load(port, agents, seconds, inflight, out, queue))
    queue.put(out)


def run_load(port: int, args: argparse.Namespace, server_pid: int) -> dict[str, float]:
    """Load the server on ``port``; also measure the server's CPU seconds per report.

    CPU per report (the whole server process, every thread) is what a shared
    machine disturbs least: it is the headline, the wall-clock rate is shown too.
    """
    # spawn, not fork: this process has used gRPC, and a forked child's channel hangs.
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[dict[str, float]] = context.Queue()
    process = context.Process(
        target=_load_process, args=(port, args.agents, args.seconds, args.inflight, queue)
    )
    process.start()
    server = psutil.Process(server_pid)
    queue.get()  # warmed up
    before = server.cpu_times()
    result = queue.get()
    after = server.cpu_times()
    process.join()
    cpu = (after.user - before.user) + (after.system - before.system)
    result["cpu_per_report"] = cpu / result["count"]
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    channel.close()


def _prepare_controller(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        fleet.RegisterImage(iter(BENCH.register_requests()), timeout=10)
        group = fleet_pb2.Group(name="bench", desired_image_ref=BENCH.ref)
        fleet.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=10)


def _measure(
    command: list[str], port: int, args: argparse.Namespace, *, prepare: bool, root: Path = ROOT
) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    server = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port)
        if prepare:
            _prepare_controller(port)
        return run_load(port, args, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=20)


def _controller_command(port: int, data: str) -> list[str]:
    return [
        sys.executable, "-m", "controller.cli.serve", "serve",
        "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--metrics-listen", "",
        "--log-level", "warning",
    ]  # fmt: skip


def _print(name: str, result: dict[str, float]) -> None:
    print(
        f"  {name:<18} {result['rate']:6.0f} reports/s  p50 {result['p50'] * 1000:6.1f} ms  "
        f"p99 {result['p99'] * 1000:6.1f} ms  "
        f"server CPU {result['cpu_per_report'] * 1e6:5.0f} us/report"
    )


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare/controller pairs, run alternately"
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure the controller of the source tree DIR in every round",
    )
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    trees = [(name, Path(directory).resolve()) for name, _, directory in
             (item.partition("=") for item in args.tree)]  # fmt: skip
    if args.echo_server:
        asyncio.run(_echo_server(args.echo_server))
        return 0
    size = len(steady_request(0, 123_456).SerializeToString())
    print(f"steady-state ReportRequest: {size} bytes (limit 512)")
    # The machine may be shared: each round measures both sides back to back, so
    # the ratio compares like with like; the median round is the headline.
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    p99s: list[float] = []
    rates: list[float] = []
    tree_ratios: dict[str, list[float]] = {name: [] for name, _ in trees}
    costs: dict[str, list[float]] = {name: [] for name, _ in trees}
    for round_number in range(1, args.rounds + 1):
        port = _free_port()
        bare = _measure(
            [sys.executable, __file__, "--echo-server", str(port)], port, args, prepare=False
        )
        with tempfile.TemporaryDirectory() as data:
            port = _free_port()
            controller = _measure(_controller_command(port, data), port, args, prepare=True)
        ratio = controller["rate"] / bare["rate"]
        cpu_ratio = bare["cpu_per_report"] / controller["cpu_per_report"]
        print(
            f"round {round_number}: controller/bare = {ratio:.2f}x by rate, "
            f"{cpu_ratio:.2f}x by server CPU per report"
        )
        _print("bare grpc.aio", bare)
        _print("controller+sqlite", controller)
        for name, root in trees:
            with tempfile.TemporaryDirectory() as data:
                port = _free_port()
                other = _measure(
                    _controller_command(port, data), port, args, prepare=True, root=root
                )
            other_ratio = bare["cpu_per_report"] / other["cpu_per_report"]
            tree_ratios[name].append(other_ratio)
            costs[name].append(other_ratio - cpu_ratio)
            _print(name[:18], other)
            print(
                f"  {name}: controller/bare = {other_ratio:.2f}x by server CPU per report; "
                f"this tree is {other_ratio - cpu_ratio:+.2f} lower"
            )
        ratios.append(ratio)
        cpu_ratios.append(cpu_ratio)
        p99s.append(controller["p99"])
        rates.append(controller["rate"])
    median = sorted(ratios)[len(ratios) // 2]
    cpu_median = sorted(cpu_ratios)[len(cpu_ratios) // 2]
    print(
        f"median controller/bare = {median:.2f}x by rate, {cpu_median:.2f}x by server CPU per "
        f"report; controller p99 median "
        f"{sorted(p99s)[len(p99s) // 2] * 1000:.1f} ms  (target >= 0.80x, p99 <= 50 ms)"
    )
    for name, _ in trees:
        print(
            f"median {name}/bare = {_median(tree_ratios[name]):.2f}x by server CPU per report; "
            f"this tree lower by {_median(costs[name]):+.2f} (median of the rounds' differences)"
        )
    rate = sorted(rates)[len(rates) // 2]
    print(f"agents reporting every 30 s one controller carries: {rate * 30:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
