"""A background loop that keeps failing is visible: health NOT_SERVING, loop_up 0, then back.

The flush loop (heartbeats written behind) is made to fail for real: the store
sits on a small tmpfs, filled to the last byte, while an agent keeps reporting.
After its deadline without a successful run (three periods, at least ten
seconds) the controller must say so where operators look — the gRPC health
service answers NOT_SERVING (the server and the AgentService the loop serves),
``corral_background_loop_up{loop="flush"}`` is 0 and the failures are counted —
and recover by itself once space is freed (docs/operations.md,
CorralBackgroundLoopDown).
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.faults_controller_support import (
    NOT_SERVING,
    SERVING,
    Controller,
    controller_on_small_disk,
    fill,
    small_disk,
    wait_until,
)

__all__ = ["controller_on_small_disk", "small_disk"]  # fixtures
GROUP = "faults"
AGENTS = "corral.v1.AgentService"


def test_a_failing_flush_loop_turns_health_not_serving_until_it_recovers(
    controller: Controller, small_disk: Path
) -> None:
    controller.group(GROUP, controller.image("1"), size=0, mode="observe")
    agent = controller.agent("liveness-1")
    agent.start()
    try:
        wait_until(
            lambda: (controller.states_or_none(GROUP) or {}).get(agent.instance_id) == "conformant",
            timeout=60, what="a conformant instance", log=agent.log,
        )  # fmt: skip
        assert controller.health() == SERVING
        assert controller.metric("corral_background_loop_up", loop="flush") == 1
        failures = controller.metric("corral_background_loop_failures_total", loop="flush")

        filler = fill(small_disk)
        wait_until(
            lambda: controller.metric("corral_background_loop_up", loop="flush") == 0,
            timeout=30, what="the flush loop reported down", log=controller.log,
        )  # fmt: skip
        assert controller.health() == NOT_SERVING
        assert controller.health(AGENTS) == NOT_SERVING
        assert controller.metric("corral_background_loop_failures_total", loop="flush") > failures
        assert "background loop flush failed" in controller.log()
        assert "background loop flush is down" in controller.log()
        # The other loops are not blamed for the flush loop's fault.
        assert controller.metric("corral_background_loop_up", loop="replacer") == 1

        filler.unlink()
        wait_until(
            lambda: controller.health() == SERVING
            and controller.health(AGENTS) == SERVING
            and controller.metric("corral_background_loop_up", loop="flush") == 1,
            timeout=60, what="health and the flush loop back", log=controller.log,
        )  # fmt: skip
        assert (controller.states_or_none(GROUP) or {}).get(agent.instance_id) == "conformant"
    finally:
        agent.stop()
