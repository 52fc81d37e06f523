"""The controller's disk fills up while an instance drifts: the taint is not lost.

The store sits on a small tmpfs of its own (mounted here; CI runs as root),
everything else (the controller's log, the instances and their agents) outside
it. The disk is filled to the last byte; an instance's file is changed, the
agent reports it, the file is reverted. Guaranteed (docs/operations.md, "Faults:
what is guaranteed"): the drift report is answered UNAVAILABLE — never UNKNOWN —
and counted with that code; the agent keeps it in its outbox; the flush loop's
failures are counted; once space is freed the instance ends tainted with the
changed path as evidence, nothing stored before is lost and health is SERVING.
"""

from __future__ import annotations

import json
from pathlib import Path

from controller.demo.fleet import APP_CONF
from tests.faults.faults_agent_support import AgentProcess, holds_drift
from tests.faults.faults_controller_support import (
    SERVING,
    Controller,
    controller_on_small_disk,
    fill,
    small_disk,
    wait_until,
)

GROUP = "faults"
CHANGED = b"/" + APP_CONF.encode()
__all__ = ["controller_on_small_disk", "small_disk"]  # fixtures
REPORT_DRIFT = "/corral.v1.AgentService/ReportDrift"
INSTANCE = "full-disk-1"
STEADY = "full-disk-steady"


def test_drift_reported_while_the_disk_is_full_ends_tainted(
    controller: Controller, small_disk: Path
) -> None:
    controller.group(GROUP, controller.image("1"), size=0, mode="observe")  # never replaced
    agent = controller.agent(INSTANCE)
    steady = controller.agent(STEADY)  # its heartbeats keep the flush loop busy
    try:
        agent.start()
        steady.start()
        wait_until(
            lambda: (controller.states_or_none(GROUP) or {}).get(STEADY) == "conformant",
            timeout=60, what="the steady instance conformant", log=steady.log,
        )  # fmt: skip
        _drift_while_full(controller, small_disk, agent)
    finally:
        agent.stop()
        steady.stop()


def _drift_while_full(controller: Controller, small_disk: Path, agent: AgentProcess) -> None:
    instance_id = agent.instance_id
    wait_until(
        lambda: (controller.states_or_none(GROUP) or {}).get(instance_id) == "conformant",
        timeout=60, what="a conformant instance", log=agent.log,
    )  # fmt: skip
    stored_before = {i.id: (i.state, i.image_digest) for i in controller.instances()}
    audit_before = json.loads(controller.corral("audit", "verify", "--json").stdout)

    filler = fill(small_disk)
    conf = agent.root / APP_CONF
    original = conf.read_bytes()
    data_dir = agent.data_dir
    conf.write_bytes(original + b"patched = true\n")
    try:
        wait_until(
            lambda: controller.metric("corral_grpc_requests_total", method=REPORT_DRIFT,
                                      code="UNAVAILABLE") >= 1,
            timeout=60, what="a drift report answered UNAVAILABLE", log=controller.log,
        )  # fmt: skip
        wait_until(
            lambda: holds_drift(data_dir, CHANGED),
            timeout=30, what="the drift kept in the agent's outbox", log=controller.log,
        )  # fmt: skip
        wait_until(
            lambda: controller.metric("corral_background_loop_failures_total", loop="flush") >= 1,
            timeout=30, what="the flush loop's failure counted", log=controller.log,
        )  # fmt: skip
        assert controller.states(GROUP)[instance_id] != "tainted"  # nothing could be written
    finally:
        conf.write_bytes(original)
    # The file is conformant again; the agent still holds the drift.
    assert holds_drift(data_dir, CHANGED)

    filler.unlink()
    wait_until(
        lambda: (controller.states_or_none(GROUP) or {}).get(instance_id) == "tainted",
        timeout=60, what="the instance tainted once space is free", log=controller.log,
    )  # fmt: skip
    shown = controller.corral("fleet", "show", instance_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert APP_CONF in shown.stdout  # the changed path is the evidence
    assert controller.metric("corral_grpc_requests_total", code="UNKNOWN") == 0
    wait_until(
        lambda: controller.health() == SERVING and controller.metric(
            "corral_background_loop_up", loop="flush") == 1,
        timeout=30, what="health and the flush loop back", log=controller.log,
    )  # fmt: skip

    # Nothing stored before the fault is lost, and the audit chain holds.
    after = {i.id: (i.state, i.image_digest) for i in controller.instances()}
    assert set(after) >= set(stored_before)
    assert {k: v[1] for k, v in after.items() if k in stored_before} == {
        k: v[1] for k, v in stored_before.items()
    }
    verified = controller.corral("audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["last_seq"] > audit_before["last_seq"]  # + the taint
