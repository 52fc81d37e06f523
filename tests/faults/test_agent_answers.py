"""What a real agent process does with each kind of answer: keep, retry, or drop once.

A scripted ``AgentService`` (in this test) answers the status codes a real
controller gives only under faults: ``UNAVAILABLE`` (storage down),
``INTERNAL`` (a bug), ``RESOURCE_EXHAUSTED`` (rate limited). The drift report
must be kept and delivered later — the same report, not only a newer one. A
definitive refusal is dropped, counted by code and logged once. A damaged
outbox file at start is one log line and a renamed file, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import grpc
import pytest

from agent.daemon.outbox_file import FILE_NAME
from controller.demo.fleet import APP_CONF
from protos.corral.v1 import agent_pb2
from tests.faults.faults_agent_support import (
    AgentProcess,
    ScriptedController,
    baked_sample,
    holds_drift,
    instance_root,
    serve,
    wait_until,
)

CHANGED = b"/" + APP_CONF.encode()


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedController, str]]:
    servicer = ScriptedController()
    server, address = serve(servicer)
    yield servicer, address
    server.stop(grace=None)


class MakeAgent(Protocol):
    """An agent process reporting to ``address``, not yet started; ``drifted`` patches its root."""

    def __call__(self, address: str, *, drifted: bool) -> AgentProcess: ...


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[MakeAgent]:
    started: list[AgentProcess] = []
    source, image_json = baked_sample(tmp_path)

    def make(address: str, *, drifted: bool) -> AgentProcess:
        root = instance_root(source, tmp_path / "instance")
        if drifted:
            with (root / APP_CONF).open("a") as handle:
                handle.write("patched = true\n")
        agent = AgentProcess(
            controller=address, root=root, image_json=image_json,
            data_dir=tmp_path / "agent-state", instance_id="agent-answers-1",
        )  # fmt: skip
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


@pytest.mark.parametrize("code", ["UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"])
def test_a_failing_controller_keeps_the_drift_and_gets_it_later(
    scripted: tuple[ScriptedController, str], make_agent: MakeAgent, code: str
) -> None:
    servicer, address = scripted
    status = grpc.StatusCode[code]
    outage = {"on": True}
    servicer.failing = lambda _method, _header: status if outage["on"] else None
    agent = make_agent(address, drifted=True)
    agent.start()
    # The channel retries UNAVAILABLE itself until the call's deadline runs out.
    codes = [code, "DEADLINE_EXCEEDED"] if code == "UNAVAILABLE" else [code]
    wait_until(
        lambda: sum(agent.metric("corral_agent_report_failures_total", code=c) or 0
                    for c in codes) >= 1,
        timeout=60, what=f"the agent to count a failed delivery as {codes}", log=agent.log(),
    )  # fmt: skip
    first_seq = next(s for m, s, _c in servicer.calls() if m == "ReportDrift")
    assert holds_drift(agent.data_dir, CHANGED)
    outage["on"] = False
    wait_until(
        lambda: bool(servicer.drifts_accepted()), timeout=60, what="a drift report accepted",
        log=agent.log(),
    )  # fmt: skip
    header, paths = servicer.drifts_accepted()[0]
    assert header.seq == first_seq and CHANGED in paths  # the very report that was refused
    assert agent.metric("corral_agent_reports_total", result="rejected") == 0
    assert agent.terminate() == 0


def test_a_definitive_refusal_is_dropped_counted_and_logged_once(
    scripted: tuple[ScriptedController, str], make_agent: MakeAgent
) -> None:
    servicer, address = scripted
    refused: list[int] = []

    def refuse_first_drift(method: str, header: agent_pb2.ReportHeader) -> grpc.StatusCode | None:
        if method == "ReportDrift" and (not refused or refused == [header.seq]):
            refused[:] = [header.seq]
            return grpc.StatusCode.FAILED_PRECONDITION
        return None

    servicer.failing = refuse_first_drift
    agent = make_agent(address, drifted=True)
    agent.start()
    wait_until(
        lambda: len(servicer.drifts_accepted()) >= 2, timeout=60,
        what="later drift reports accepted", log=agent.log(),
    )  # fmt: skip
    [seq] = refused
    assert [s for _m, s, _c in servicer.calls()].count(seq) == 1  # never resent
    wait_until(
        lambda: agent.metric("corral_agent_reports_total", result="rejected") == 1,
        timeout=30, what="the refusal counted", log=agent.log(),
    )  # fmt: skip
    assert agent.metric("corral_agent_report_failures_total", code="FAILED_PRECONDITION") == 1
    assert agent.terminate() == 0
    lines = [line for line in agent.log().splitlines() if "controller refused a report" in line]
    assert len(lines) == 1 and "FAILED_PRECONDITION" in lines[0]


def test_a_damaged_outbox_file_at_start_is_set_aside_in_one_line(
    scripted: tuple[ScriptedController, str], make_agent: MakeAgent
) -> None:
    servicer, address = scripted
    agent = make_agent(address, drifted=False)
    agent.data_dir.mkdir(parents=True)
    damaged = b'corral-agent-outbox 1 0000 4096\n{"reports": [{"instance_id": "agent-ans'
    (agent.data_dir / FILE_NAME).write_bytes(damaged)
    agent.start()
    wait_until(
        lambda: any(c == "OK" for _m, _s, c in servicer.calls()), timeout=60,
        what="a report delivered after the damaged file", log=agent.log(),
    )  # fmt: skip
    [aside] = [p for p in agent.data_dir.iterdir() if p.name.startswith(FILE_NAME + ".damaged-")]
    assert aside.read_bytes() == damaged  # renamed, not deleted
    assert agent.metric("corral_agent_errors_total", reason="outbox_damaged") == 1
    assert agent.terminate() == 0
    log = agent.log()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "is damaged" in line]
    assert len(lines) == 1 and aside.name in lines[0]
