"""An agent's clock far in the future: its reports are refused, counted, and wedge nothing.

Guaranteed (docs/operations.md, "Faults: what is guaranteed"): a report stamped
more than ``max_clock_skew`` (300 s by default) ahead of the controller's clock
is refused with INVALID_ARGUMENT naming the skew, counted with that code, and
stores nothing — so the instance's next report with a sane clock is taken as
usual (one bad timestamp cannot hold back the ordering of later reports).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.corral.v1 import agent_pb2, agent_pb2_grpc
from tests.faults.faults_controller_support import Controller, register_wire_image, wire_report

GROUP = "skew"
REPORT = "/corral.v1.AgentService/Report"


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    made = Controller(tmp_path / "home", local_provider=False)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def test_a_report_from_the_future_is_refused_counted_and_wedges_nothing(
    controller: Controller,
) -> None:
    register_wire_image(controller, GROUP)
    with grpc.insecure_channel(f"127.0.0.1:{controller.port}") as channel:
        agent = agent_pb2_grpc.AgentServiceStub(channel)
        now_ms = int(time.time() * 1000)
        first = agent.Report(wire_report("i-skew", GROUP, 5, scanned_at_ms=now_ms), timeout=10)
        assert first.state == agent_pb2.INSTANCE_STATE_CONFORMANT

        ahead = now_ms + 3_600_000  # an hour ahead
        with pytest.raises(grpc.RpcError) as refused:
            agent.Report(wire_report("i-skew", GROUP, 6, scanned_at_ms=ahead), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ahead of the controller's clock" in (refused.value.details() or "")
        assert (
            controller.metric("corral_grpc_requests_total", method=REPORT, code="INVALID_ARGUMENT")
            == 1
        )

        (stored,) = controller.instances(GROUP)
        assert stored.last_seq == 5  # nothing of the refused report was kept
        later = agent.Report(
            wire_report("i-skew", GROUP, 6, scanned_at_ms=int(time.time() * 1000)), timeout=10
        )
        assert later.state == agent_pb2.INSTANCE_STATE_CONFORMANT
        (stored,) = controller.instances(GROUP)
        assert stored.last_seq == 6
