"""Queued drift survives the agent's SIGTERM and SIGKILL: real controller, real agent.

The story of issue "never lose a taint": the controller is down, a file is
changed, the agent scans and queues the drift report, the file is reverted,
the agent is stopped (a reboot: SIGTERM; a crash or OOM kill: SIGKILL). When
the controller is back and the agent starts again, the instance must be
tainted with the changed path as evidence, although the file is conformant
again by then.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.fleet import APP_CONF
from tests.e2e.support import STATE, Fleet
from tests.faults.faults_agent_support import (
    AgentProcess,
    holds_drift,
    instance_root,
    wait_until,
)

GROUP = "faults"
INSTANCE = "agent-fault-1"
CHANGED = b"/" + APP_CONF.encode()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "controller")
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def agent(fleet: Fleet, tmp_path: Path) -> Iterator[AgentProcess]:
    ref = fleet.image("1")
    fleet.group(GROUP, ref, size=0, mode="observe")  # nothing launched, nothing replaced
    root = instance_root(fleet.data / "root-1", tmp_path / "instance")
    process = AgentProcess(
        controller=f"127.0.0.1:{fleet.port}",
        root=root,
        image_json=fleet.data / "images" / "1" / "image.json",
        data_dir=tmp_path / "agent-state",
        instance_id=INSTANCE,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _state(fleet: Fleet) -> str | None:
    try:
        return fleet.states(GROUP).get(INSTANCE)
    except Exception:  # the controller is (re)starting
        return None


def _queue_a_reverted_drift(fleet: Fleet, agent: AgentProcess) -> None:
    """Conformant first; then, controller down, a change the agent queues, then reverted."""
    wait_until(
        lambda: _state(fleet) == "conformant", timeout=60, what="conformant", log=agent.log()
    )
    fleet.kill()
    conf = agent.root / APP_CONF
    original = conf.read_bytes()
    conf.write_bytes(original + b"patched = true\n")
    wait_until(
        lambda: holds_drift(agent.data_dir, CHANGED),
        timeout=60,
        what="the drift report in the agent's outbox file",
        log=agent.log(),
    )
    conf.write_bytes(original)  # reverted: every later scan is conformant


def _assert_tainted_with_the_path(fleet: Fleet, agent: AgentProcess) -> None:
    fleet.start()
    agent.start()
    wait_until(
        lambda: _state(fleet) == "tainted",
        timeout=60,
        what="the instance to be tainted by the kept drift report",
        log=agent.log(),
    )
    instance = fleet.instance(INSTANCE)  # lists carry summaries; the evidence is here
    assert STATE[instance.state] == "tainted"
    assert CHANGED in [change.path for change in instance.taint.changes]
    wait_until(
        lambda: agent.metric("corral_agent_buffered_reports") == 0,
        timeout=60,
        what="the outbox to empty",
        log=agent.log(),
    )
    assert not (agent.data_dir / "outbox.json").exists()
    assert "Traceback" not in agent.log()


def test_sigterm_with_queued_drift_then_restart_taints(fleet: Fleet, agent: AgentProcess) -> None:
    _queue_a_reverted_drift(fleet, agent)
    assert agent.terminate() == 0
    assert holds_drift(agent.data_dir, CHANGED)  # still there after a clean stop
    _assert_tainted_with_the_path(fleet, agent)


def test_sigkill_with_queued_drift_then_restart_taints(fleet: Fleet, agent: AgentProcess) -> None:
    _queue_a_reverted_drift(fleet, agent)
    agent.kill()
    assert holds_drift(agent.data_dir, CHANGED)
    _assert_tainted_with_the_path(fleet, agent)
