"""After a controller outage shorter than the staleness limit, the agent is back in time.

A real ``corral-controller serve`` is SIGKILLed while an agent reports to it,
stays down long enough for the agent's retries (and gRPC's own reconnect
backoff) to grow, and is started again on the same port. The agent must
report again within the controller's staleness limit counted from the moment
the controller listens again: its retry cap is the report interval, gRPC's
reconnect backoff is bounded by that cap, and a failed call opens a fresh
channel. The wait below is that limit: it is the property under test, not a
tuning of the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Fleet
from tests.faults.faults_agent_support import AgentProcess, instance_root, wait_until

GROUP = "faults"
INSTANCE = "agent-reconnect-1"
INTERVAL = 2.0  # the agent's and the controller's report interval, seconds
STALE_AFTER = 3 * INTERVAL  # the controller's default staleness limit


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "controller")
    text = fleet.config.read_text()
    assert "report_interval = 1.0\n" in text
    fleet.config.write_text(
        text.replace("report_interval = 1.0\n", f"report_interval = {INTERVAL}\n")
    )
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def _last_report_ms(fleet: Fleet) -> int:
    try:
        return max(
            (i.last_report_ms for i in fleet.instances(GROUP) if i.id == INSTANCE), default=0
        )
    except Exception:  # the controller is (re)starting
        return 0


@pytest.mark.slow
def test_the_agent_reports_within_the_staleness_limit_after_an_outage(
    fleet: Fleet, tmp_path: Path
) -> None:
    ref = fleet.image("1")
    fleet.group(GROUP, ref, size=0, mode="observe")
    agent = AgentProcess(
        controller=f"127.0.0.1:{fleet.port}",
        root=instance_root(fleet.data / "root-1", tmp_path / "instance"),
        image_json=fleet.data / "images" / "1" / "image.json",
        data_dir=tmp_path / "agent-state",
        instance_id=INSTANCE,
        interval=INTERVAL,
    )
    agent.start()
    try:
        wait_until(lambda: _last_report_ms(fleet) > 0, timeout=60, what="a first report",
                   log=agent.log())  # fmt: skip
        fleet.kill()
        # Down for a dozen failed deliveries (about 15 s): long enough for gRPC's default
        # reconnect backoff (1 s growing 1.6x per attempt, up to 120 s) to pass the limit.
        wait_until(
            lambda: sum(agent.metric("corral_agent_report_failures_total", code=c) or 0
                        for c in ("UNAVAILABLE", "DEADLINE_EXCEEDED")) >= 12,
            timeout=120, what="a dozen failed deliveries", log=agent.log(),
        )  # fmt: skip
        fleet.start()  # same port; returns once it answers
        back_ms = int(time.time() * 1000)
        wait_until(
            lambda: _last_report_ms(fleet) >= back_ms,
            timeout=STALE_AFTER,
            what="a report within the staleness limit of the controller's return",
            log=agent.log(),
        )
        assert agent.terminate() == 0
    finally:
        agent.stop()
