"""Soak benchmark: many simulated agents against real controllers, memory and latency over time.

Each simulated agent is an asyncio task with its own instance id (and boot id,
increasing seq, footprint), reporting every ``--interval`` seconds with jitter,
as ``corral-agent run`` does with its interval compressed. Agents share a pool
of gRPC channels (``--agents-per-channel``) so 10 000 of them fit in one
process's file descriptors. The controllers are real ``corral-controller
serve`` processes:

- ``sqlite``: one controller on SQLite;
- ``postgres``: two replicas on one fresh PostgreSQL schema, agents split
  between them.

While the agents report, canary instances in an enforce-mode group drift now
and then; the time from the taint to the replacement engine starting their
replacement (the instance leaves ``tainted``) is the replacement-engine lag.
At the end it prints each controller's RSS over time and its slope after the
warm-up, p50/p99 report latency, errors by status code, and the lag.

    python tests/bench/bench_soak.py                        # short: 500 agents, 60 s, both stores
    python tests/bench/bench_soak.py --agents 10000 --seconds 600 --interval 20
    python tests/bench/bench_soak.py --store sqlite

Targets (issue 11, on this machine): RSS growth after warm-up < 5 %, zero
errors, p99 <= 100 ms on SQLite. They are printed, never asserted here;
``tests/integration/test_soak_short.py`` runs a small soak for correctness.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
import psutil
import psycopg
from psycopg import sql

from protos.corral.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.fixtures.baked import ENTRIES, Baked

ROOT = Path(__file__).resolve().parents[2]
SOAK = Baked("soak", entries=ENTRIES[1:2])
BASELINE = SOAK.manifest.root
GROUP = "soak"
#: How long after the run a canary may still be picked up before its lag is "never".
LAG_GRACE = 10.0
CANARY_GROUP = "soak-canary"
DRIFTED_ROOT = b"\x0d" * 32
#: Where ``--store postgres`` makes its throw-away schema (as tests/fixtures/postgres.py).
DEFAULT_DSN = os.environ.get(
    "CORRAL_TEST_POSTGRES_DSN",
    "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3",
)


@dataclass
class SoakOptions:
    agents: int = 500
    seconds: float = 60.0
    interval: float = 5.0
    store: str = "sqlite"
    warmup: float = 0.3
    agents_per_channel: int = 100
    canaries: int = 3
    sample_every: float = 2.0
    #: libpq DSN of the server ``postgres`` mode uses; a fresh schema is made on it.
    postgres_dsn: str = DEFAULT_DSN
    #: Share of the agents that report in the enforce-mode canary group.
    canary_group_share: float = 0.1


@dataclass
class SoakResult:
    store: str
    reports: int = 0
    # (seconds since start, latency) of every answered report.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    # Per controller process: (seconds since start, RSS bytes).
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    lags: list[float | None] = field(default_factory=list)
    warmup_seconds: float = 0.0
    # Per controller: how many warning/error lines it logged, and the last of them.
    log_problems: dict[str, tuple[int, str]] = field(default_factory=dict)

    def percentile(self, share: float, *, steady: bool = True) -> float:
        """A latency percentile, after the warm-up (``steady``) or over the whole run."""
        ordered = sorted(
            latency for t, latency in self.latencies if not steady or t >= self.warmup_seconds
        )
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0

    def growth(self, name: str) -> tuple[float, float]:
        """RSS after warm-up: (growth in % from first to last sample, slope in MiB/min)."""
        samples = [(t, r) for t, r in self.rss[name] if t >= self.warmup_seconds]
        if len(samples) < 2:
            return 0.0, 0.0
        n = len(samples)
        mean_t = sum(t for t, _ in samples) / n
        mean_r = sum(r for _, r in samples) / n
        var = sum((t - mean_t) ** 2 for t, _ in samples) or 1.0
        slope = sum((t - mean_t) * (r - mean_r) for t, r in samples) / var  # bytes/s
        fitted_start = mean_r + slope * (samples[0][0] - mean_t)
        fitted_end = mean_r + slope * (samples[-1][0] - mean_t)
        growth = (fitted_end - fitted_start) / fitted_start * 100 if fitted_start else 0.0
        return growth, slope * 60 / 2**20


# Controllers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Controller:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start(name: str, data: Path, options: SoakOptions, env: dict[str, str]) -> Controller:
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = data / "controller.toml"
    lines = [
        f'listen = "127.0.0.1:{port}"',
        'metrics_listen = ""',
        f"data_dir = {json.dumps(str(data))}",
        f'store = "{options.store}"',
        f"report_interval = {options.interval}",
        "sweep_interval = 5",
        'log_level = "warning"',
    ]
    config.write_text("\n".join(lines) + "\n")
    log = (data / "controller.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.serve", "serve", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return Controller(name, port, process)


def _wait_up(controller: Controller, timeout: float = 60.0) -> None:
    channel = grpc.insecure_channel(controller.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    finally:
        channel.close()


def _stop(controller: Controller) -> None:
    if controller.process.poll() is None:
        controller.process.terminate()
        try:
            controller.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            controller.process.kill()
            controller.process.wait(timeout=10)


@contextmanager
def controllers(options: SoakOptions, base: Path) -> Iterator[list[Controller]]:
    """One SQLite controller, or two PostgreSQL replicas on ``options.postgres_schema``."""
    started: list[Controller] = []
    try:
        if options.store == "sqlite":
            started.append(_start("sqlite", base / "sqlite", options, {}))
        else:
            with _fresh_schema(options.postgres_dsn) as schema:
                for name in ("replica-a", "replica-b"):
                    dsn = psycopg.conninfo.make_conninfo(
                        options.postgres_dsn,
                        options=f"-c search_path={schema}",
                        application_name=name,
                    )
                    env = {"CORRAL_POSTGRES_DSN": dsn}
                    started.append(_start(name, base / name, options, env))
                for controller in started:
                    _wait_up(controller)
                yield started
                return
        for controller in started:
            _wait_up(controller)
        yield started
    finally:
        for controller in started:
            _stop(controller)


@contextmanager
def _fresh_schema(dsn: str) -> Iterator[str]:
    """An empty schema on ``dsn``, dropped with everything in it afterwards."""
    name = f"corral_soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def _prepare(controller: Controller, canaries: int) -> None:
    with grpc.insecure_channel(controller.address) as channel:
        fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        fleet.RegisterImage(iter(SOAK.register_requests()), timeout=30)
        observed = fleet_pb2.Group(name=GROUP, desired_image_ref=SOAK.ref)
        # Canaries are replaced: an enforce group with a budget for all of them. A share of
        # the agents reports there too, so the canaries stay under the breaker's threshold.
        enforced = fleet_pb2.Group(
            name=CANARY_GROUP,
            desired_image_ref=SOAK.ref,
            mode=fleet_pb2.GROUP_MODE_ENFORCE,
            max_concurrent_replacements=max(1, canaries),
        )
        for group in (observed, enforced):
            fleet.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=30)


# Agents ---------------------------------------------------------------------------------


def _header(instance_id: str, group: str, seq: int, root: bytes) -> agent_pb2.ReportHeader:
    return agent_pb2.ReportHeader(
        instance_id=instance_id,
        group=group,
        image_ref=SOAK.ref,
        image_digest=SOAK.digest,
        root=root,
        seq=seq,
        boot_id="5b0c6a1e-2f3d-4e5a-8b9c-0d1e2f3a4b5c",
        scanned_at_ms=int(time.time() * 1000),
        footprint=agent_pb2.AgentFootprint(rss_bytes=40_000_000 + seq, cpu_millis=seq),
        agent_version="0.1.0",
    )


async def _agent(
    stub: agent_pb2_grpc.AgentServiceAsyncStub,
    instance_id: str,
    group: str,
    options: SoakOptions,
    began: float,
    deadline: float,
    result: SoakResult,
) -> None:
    seq = 0
    rng = random.Random(instance_id)
    await asyncio.sleep(rng.uniform(0, options.interval))  # spread the first reports
    while time.monotonic() < deadline:
        seq += 1
        started = time.perf_counter()
        try:
            await stub.Report(
                agent_pb2.ReportRequest(header=_header(instance_id, group, seq, BASELINE)),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
        else:
            result.latencies.append((time.monotonic() - began, time.perf_counter() - started))
            result.reports += 1
        await asyncio.sleep(options.interval * rng.uniform(0.9, 1.1))


async def _canary(
    stub: agent_pb2_grpc.AgentServiceAsyncStub,
    fleet: fleet_pb2_grpc.FleetServiceAsyncStub,
    index: int,
    options: SoakOptions,
    deadline: float,
    result: SoakResult,
) -> None:
    """A canary drifts at a point of the run; the lag is taint → replacement started."""
    instance_id = f"canary-{index}"
    await asyncio.sleep(options.seconds * (index + 1) / (options.canaries + 2))
    try:
        await stub.Report(
            agent_pb2.ReportRequest(header=_header(instance_id, CANARY_GROUP, 1, BASELINE)),
            timeout=10,
        )
        answer = await stub.Report(
            agent_pb2.ReportRequest(header=_header(instance_id, CANARY_GROUP, 2, DRIFTED_ROOT)),
            timeout=10,
        )
    except grpc.aio.AioRpcError as exc:
        result.errors[exc.code().name] += 1
        return
    tainted = time.monotonic()
    assert answer.state == agent_pb2.INSTANCE_STATE_TAINTED
    request = fleet_pb2.GetInstanceRequest(instance_id=instance_id)
    while time.monotonic() < deadline + LAG_GRACE:
        shown = await fleet.GetInstance(request, timeout=10)
        if shown.instance.state != agent_pb2.INSTANCE_STATE_TAINTED:
            result.lags.append(time.monotonic() - tainted)
            return
        await asyncio.sleep(0.1)
    result.lags.append(None)


async def _soak(options: SoakOptions, started: list[Controller]) -> SoakResult:
    result = SoakResult(store=options.store, warmup_seconds=options.seconds * options.warmup)
    per = max(1, options.agents_per_channel)
    channels = [
        grpc.aio.insecure_channel(started[n % len(started)].address)
        for n in range((options.agents + per - 1) // per)
    ]
    try:
        stubs = [agent_pb2_grpc.AgentServiceStub(channel) for channel in channels]
        began = time.monotonic()
        deadline = began + options.seconds
        processes = {c.name: psutil.Process(c.process.pid) for c in started}
        sampler = asyncio.create_task(
            _sample_every(processes, began, deadline, result, options.sample_every)
        )
        fleet = fleet_pb2_grpc.FleetServiceStub(channels[0])
        in_canary_group = (
            int(options.agents * options.canary_group_share) if options.canaries else 0
        )
        tasks = [
            _agent(
                stubs[i // per],
                f"i-{i:06d}",
                CANARY_GROUP if i < in_canary_group else GROUP,
                options,
                began,
                deadline,
                result,
            )
            for i in range(options.agents)
        ]
        tasks += [
            _canary(stubs[0], fleet, n, options, deadline, result) for n in range(options.canaries)
        ]
        await asyncio.gather(*tasks)
        await sampler
    finally:
        for channel in channels:
            await channel.close()
    return result


async def _sample_every(
    processes: dict[str, psutil.Process],
    began: float,
    deadline: float,
    result: SoakResult,
    every: float,
) -> None:
    while True:
        now = time.monotonic()
        for name, process in processes.items():
            result.rss.setdefault(name, []).append((now - began, process.memory_info().rss))
        if now >= deadline:
            return
        await asyncio.sleep(min(every, max(0.0, deadline - now)))


def run_soak(options: SoakOptions) -> SoakResult:
    """Start the controllers, run the agents, stop everything; returns what was measured."""
    with (
        tempfile.TemporaryDirectory(prefix="corral-soak-") as base,
        controllers(options, Path(base)) as started,
    ):
        _prepare(started[0], options.canaries)
        result = asyncio.run(_soak(options, started))
        for controller in started:
            _stop(controller)
            result.log_problems[controller.name] = _problems(Path(base) / controller.name)
        return result


def _problems(data: Path) -> tuple[int, str]:
    """Warning and error lines of a controller's log, and the last one (cut)."""
    lines = (data / "controller.log").read_text(errors="replace").splitlines()
    bad = [line for line in lines if '"warning"' in line.lower() or '"error"' in line.lower()]
    return len(bad), (bad[-1][:300] if bad else "")


# Report ---------------------------------------------------------------------------------


def report(result: SoakResult, options: SoakOptions) -> str:
    lines = [
        f"== {result.store}: {options.agents} agents every {options.interval:g} s for "
        f"{options.seconds:g} s (warm-up {result.warmup_seconds:.0f} s)",
        f"  reports {result.reports}  ({result.reports / options.seconds:.0f}/s)  after warm-up: "
        f"p50 {result.percentile(0.5) * 1000:.1f} ms  p99 {result.percentile(0.99) * 1000:.1f} ms"
        " (target p99 <= 100 ms on SQLite); whole run incl. first reports: "
        f"p99 {result.percentile(0.99, steady=False) * 1000:.1f} ms",
        "  errors by code: "
        + (", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"),
    ]
    for name, samples in result.rss.items():
        growth, slope = result.growth(name)
        step = max(1, len(samples) // 8)
        shown = "  ".join(f"{t:.0f}s:{r / 2**20:.0f}" for t, r in samples[::step])
        lines.append(f"  {name} RSS MiB over time: {shown}")
        lines.append(
            f"  {name} after warm-up: growth {growth:+.1f} %  slope {slope:+.2f} MiB/min "
            "(target growth < 5 %)"
        )
    for name, (count, last) in result.log_problems.items():
        lines.append(
            f"  {name} log: {count} warning/error lines" + (f"; last: {last}" if last else "")
        )
    lags = ", ".join("never" if lag is None else f"{lag * 1000:.0f} ms" for lag in result.lags)
    lines.append(f"  replacement-engine lag (taint -> replacing): {lags or 'no canaries'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0, help="each agent's report interval")
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--agents-per-channel", type=int, default=100)
    parser.add_argument("--canaries", type=int, default=3)
    args = parser.parse_args()
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    for store in stores:
        options = SoakOptions(
            agents=args.agents,
            seconds=args.seconds,
            interval=args.interval,
            store=store,
            agents_per_channel=args.agents_per_channel,
            canaries=args.canaries,
        )
        print(report(run_soak(options), options), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
