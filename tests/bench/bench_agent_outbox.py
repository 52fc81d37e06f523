"""Agent outbox benchmark: what keeping reports on disk costs the agent's hot path.

The steady state (a header-only report queued, delivered, removed) must cost
no file I/O: this compares, per report, the durable outbox (with its file in
a temporary data dir) against a memory-only outbox, both delivering through
the real gRPC transport to an accepting ``AgentService`` on loopback. Rounds
alternate between the two and the medians are compared (ratio 1.00 means no
cost). It then times what *is* written when something must not be lost: one
outbox file with a steady report (each report during an outage) and with a
drift report at the evidence bound (1 MiB). Not a pass/fail test.

    python tests/bench/bench_agent_outbox.py [--reports 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.daemon.outbox import Outbox
from agent.daemon.outbox_file import OutboxFile
from agent.daemon.report import PendingReport, bound_evidence
from agent.daemon.transport import GrpcTransport
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryType
from agent.manifest.report import Footprint, Report
from protos.corral.v1 import agent_pb2, agent_pb2_grpc


class Accepting(agent_pb2_grpc.AgentServiceServicer):
    def Report(
        self, request: agent_pb2.ReportRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportResponse:
        return agent_pb2.ReportResponse(state=agent_pb2.INSTANCE_STATE_CONFORMANT)


def header(seq: int) -> Report:
    return Report(
        instance_id="i-0123456789abcdef0", group="web", image_ref="web@sha256:" + "a" * 64,
        image_digest="sha256:" + "a" * 64, root=bytes(32), seq=seq, boot_id="b" * 36,
        scanned_at_ms=1_800_000_000_000 + seq, footprint=Footprint(40 << 20, 1234),
        agent_version="0.1.0",
    )  # fmt: skip


def steady_round(outbox: Outbox, transport: GrpcTransport, count: int, first: int) -> float:
    started = time.perf_counter()
    for seq in range(first, first + count):
        outbox.push(PendingReport(header(seq)))
        report = outbox.peek()
        assert report is not None
        transport.deliver(report)
        outbox.pop()
    return (time.perf_counter() - started) / count


def drift_at_the_bound() -> PendingReport:
    changes = [
        Change(ChangeKind.MODIFIED, b"/usr/lib/app/file-%08d" % i,
               Entry(b"/usr/lib/app/file-%08d" % i, EntryType.REGULAR, 0o644, 0, 0, 4096,
                     b"\x01" * 32), ("content",))
        for i in range(20_000)
    ]  # fmt: skip
    return PendingReport(header(1), bound_evidence(changes, max_changes=10_000, max_bytes=1 << 20))


def median_save(box: OutboxFile, reports: list[PendingReport], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        box.save(reports)
        times.append(time.perf_counter() - started)
    box.remove()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=2000, help="reports per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # Only Report is called; the generated base answers ReportDrift UNIMPLEMENTED.
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Accepting(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    transport = GrpcTransport(f"127.0.0.1:{port}", deadline=5.0, agent_version="bench")
    with tempfile.TemporaryDirectory() as state:
        box = OutboxFile(state)
        durable, memory = Outbox(capacity=128, file=box), Outbox(capacity=128)
        steady_round(memory, transport, 200, 1)  # warm the channel
        timings: dict[str, list[float]] = {"memory": [], "durable": []}
        seq = 1000
        for _ in range(args.rounds):
            for name, outbox in (("memory", memory), ("durable", durable)):
                timings[name].append(steady_round(outbox, transport, args.reports, seq))
                seq += args.reports
        assert not box.exists(), "the steady state wrote the outbox file"
        base, kept = statistics.median(timings["memory"]), statistics.median(timings["durable"])
        print(f"steady-state report, memory-only outbox (baseline): {base * 1e6:8.1f} us")
        print(f"steady-state report, durable outbox:                {kept * 1e6:8.1f} us")
        print(f"ratio durable/baseline: {kept / base:.3f}  (no file written: {not box.exists()})")
        steady = median_save(box, [PendingReport(header(1))], 20)
        drift = drift_at_the_bound()
        big = median_save(box, [drift], 5)
        print(f"outbox file write, one steady report (during an outage): {steady * 1e3:7.2f} ms")
        print(f"outbox file write, one drift report at the 1 MiB bound:   {big * 1e3:7.2f} ms")
    transport.close()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
