"""Which answers drop a report and which keep it, against a real gRPC server on loopback.

A servicer written here answers every call with one status code; the agent's
transport must turn definitive refusals into ReportRejectedError (dropped) and
everything else into RetryableError (kept). Also: the channel's reconnect
backoff is bounded by the agent's retry cap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from agent.daemon.report import PendingReport
from agent.daemon.transport import DEFINITIVE, GrpcTransport, channel_options, is_definitive
from agent.errors import ReportRejectedError, RetryableError
from agent.manifest.report import Footprint, Report
from protos.corral.v1 import agent_pb2, agent_pb2_grpc

REFUSALS = {"INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION", "ALREADY_EXISTS",
            "PERMISSION_DENIED", "NOT_FOUND"}  # fmt: skip
ANSWERS = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


class OneAnswer(agent_pb2_grpc.AgentServiceServicer):
    """Answers every report with ``code`` (and a retry hint, as a controller may)."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.UNAVAILABLE

    def Report(
        self, request: agent_pb2.ReportRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReportResponse:
        context.set_trailing_metadata((("retry-after-ms", "2500"),))
        context.abort(self.code, "the answer under test")


@pytest.fixture(scope="module")
def answering() -> Iterator[tuple[OneAnswer, GrpcTransport]]:
    servicer = OneAnswer()  # type: ignore[abstract]  # only Report is under test
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    transport = GrpcTransport(f"127.0.0.1:{port}", deadline=5.0, agent_version="t")
    yield servicer, transport
    transport.close()
    server.stop(grace=None)


REPORT = PendingReport(
    Report(
        instance_id="i-1", group="web", image_ref="web@sha256:" + "a" * 64,
        image_digest="sha256:" + "a" * 64, root=bytes(32), seq=1, boot_id="b",
        scanned_at_ms=1_800_000_000_000, footprint=Footprint(0, 0), agent_version="t",
    )
)  # fmt: skip


def test_the_documented_refusals_are_the_only_definitive_codes() -> None:
    assert {code.name for code in DEFINITIVE} == REFUSALS
    assert {code.name for code in grpc.StatusCode if is_definitive(code)} == REFUSALS


@pytest.mark.parametrize("code", ANSWERS, ids=lambda code: code.name)
def test_each_answer_drops_or_keeps_the_report_as_documented(
    answering: tuple[OneAnswer, GrpcTransport], code: grpc.StatusCode
) -> None:
    servicer, transport = answering
    servicer.code = code
    if code.name in REFUSALS:
        with pytest.raises(ReportRejectedError) as refused:
            transport.deliver(REPORT)
        assert refused.value.code == code.name
    else:
        with pytest.raises(RetryableError) as kept:
            transport.deliver(REPORT)
        assert kept.value.code == code.name
        assert kept.value.delay == 2.5  # the controller's hint, whatever the code


def test_a_closed_transport_keeps_the_report() -> None:
    transport = GrpcTransport("127.0.0.1:1", deadline=1.0, agent_version="t")
    transport.close()
    with pytest.raises(RetryableError, match="closed"):
        transport.deliver(REPORT)


@pytest.mark.parametrize("cap", [0.5, 2.0, 30.0, 300.0])
def test_the_channel_reconnect_backoff_never_exceeds_the_agent_retry_cap(cap: float) -> None:
    options = dict(channel_options(deadline=5.0, agent_version="t", reconnect_cap=cap))
    bounds = [
        options["grpc.initial_reconnect_backoff_ms"],
        options["grpc.min_reconnect_backoff_ms"],
        options["grpc.max_reconnect_backoff_ms"],
    ]
    assert all(isinstance(value, int) and 0 < value <= cap * 1000 for value in bounds)
    assert options["grpc.max_reconnect_backoff_ms"] == int(cap * 1000)
    retry = json.loads(str(options["grpc.service_config"]))["methodConfig"][0]["retryPolicy"]
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE"]
