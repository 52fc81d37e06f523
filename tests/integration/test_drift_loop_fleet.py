"""The drift loop with real processes: a controller and ``corral-agent run`` agents on loopback.

One image is baked from a small tree; each agent watches its own copy of that
tree (``--root``) and keeps its state outside it. The group is observe-mode
with a desired size of 0, so the replacement engine launches and replaces
nothing: the agents are started and stopped here, by PID.

The story follows the drift loop's promises: every instance conformant; a
changed file taints its instance within one scan interval, with the path as
evidence; restoring the file does not clear the taint; a controller killed
with SIGKILL and restarted on the same data dir keeps every state and taint,
the agents resume, and the outage taints nobody; an agent started while the
controller is down delivers once it is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.paths import display_path
from controller.audit.record import EventKind
from controller.audit.sqlite import SqliteAuditLog
from controller.demo import fleet as support
from protos.corral.v1 import fleet_pb2
from tests.e2e.support import STATE, AgentProcesses, Fleet, sample_agents

GROUP = "web"
INTERVAL = 0.5
WAIT = 30.0
# The controller's staleness limit with the Fleet's settings (3 x report_interval).
STALE_AFTER = 3 * support.DemoSettings().scan_interval


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "controller")
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def agents(tmp_path: Path, fleet: Fleet) -> Iterator[AgentProcesses]:
    options = ["--interval", str(INTERVAL), "--jitter", "0"]
    started = sample_agents(tmp_path, fleet, files=5, group=GROUP, options=options)
    try:
        yield started
    finally:
        started.stop_all()


def instance(fleet: Fleet, instance_id: str) -> fleet_pb2.Instance:
    request = fleet_pb2.GetInstanceRequest(instance_id=instance_id)
    return fleet.client.call(fleet.client.stub.GetInstance, request).instance


def taint_records(fleet: Fleet, instance_id: str) -> list[str]:
    """Kinds of the audit records naming ``instance_id`` that taint it or carry drift."""
    log = SqliteAuditLog.open(fleet.data / "corral.db", read_only=True)
    try:
        history = log.instance_history(instance_id)
    finally:
        log.close()
    kinds = {EventKind.TAINT, EventKind.DRIFT_EVIDENCE}
    return [str(r.event.kind) for r in history.records if r.event.kind in kinds]


def assert_waited(
    predicate: Callable[[], bool], what: str, agents: AgentProcesses, *, timeout: float = WAIT
) -> None:
    if not support.wait_for(predicate, timeout=timeout, step=0.05):
        logs = {i: agents.log(i)[-1500:] for i in agents.processes}
        pytest.fail(f"timed out waiting for {what}; agent logs: {logs}")


def test_drift_loop_with_real_agents_and_a_controller_restart(
    fleet: Fleet, agents: AgentProcesses
) -> None:
    fleet.start()
    fleet.register(agents.bake_dir)
    image = json.loads((agents.bake_dir / "image.json").read_text())
    ref, baseline = image["image_ref"], bytes.fromhex(image["root"])
    fleet.group(GROUP, ref, size=0, mode="observe")
    trio = ("i-a", "i-b", "i-c")
    for instance_id in trio:
        agents.start(instance_id)
    assert_waited(lambda: fleet.conformant(GROUP, 3), "three conformant", agents)

    # A changed file taints its instance within one scan interval: the first scan
    # that starts after the change finds it (counted in scans, not seconds: how
    # long that takes is measured by tests/bench/bench_realtime.py).
    victim, clean = "i-b", ("i-a", "i-c")
    conf = agents.root(victim) / support.APP_CONF
    original = conf.read_bytes()
    scans_before = _scans_until_drift(agents.log(victim))
    conf.write_bytes(original + b"patched = true\n")
    assert_waited(lambda: fleet.states(GROUP)[victim] == "tainted", "the taint", agents)
    finding_scan = _scans_until_drift(agents.log(victim))
    # +1: the next scan; +2: a scan already running when the file changed missed it.
    assert finding_scan <= scans_before + 2, (scans_before, finding_scan)
    shown = fleet.corral("fleet", "show", victim, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["state"] == "tainted"
    assert document["taint"]["kind"] == "file"
    assert document["taint"]["evidence_verified"] is True
    changes = [(c["kind"], c["path"]) for c in document["taint"]["changes"]]
    assert changes == [("modified", "/" + support.APP_CONF)]
    taint = instance(fleet, victim).taint
    assert [display_path(c.path) for c in taint.changes] == ["/" + support.APP_CONF]

    # Restored: the taint stays, the others stay conformant.
    conf.write_bytes(original)
    clean_reports: set[int] = set()  # seqs of the victim's reports of the baseline root

    def reported_clean_thrice() -> bool:
        now = instance(fleet, victim)
        assert STATE[now.state] == "tainted", now
        if now.root == baseline:
            clean_reports.add(now.last_seq)
        return len(clean_reports) >= 3

    assert_waited(reported_clean_thrice, "three reports of the restored root", agents)
    assert fleet.states(GROUP) == {"i-a": "conformant", "i-b": "tainted", "i-c": "conformant"}
    assert instance(fleet, victim).taint == taint

    # SIGKILL the controller; an agent starts while it is down. The outage
    # outlasts the controller's staleness limit. The controller counts silence from
    # its own restart, but an agent backing off (up to 2 intervals) on a loaded
    # machine may still come back after the 3 s limit: silence may then make an
    # instance unknown for a moment — never tainted, which is what this checks.
    before = {i: instance(fleet, i) for i in trio}
    fleet.kill()
    killed_at = time.monotonic()
    agents.start("i-d")
    assert_waited(
        lambda: (
            "controller unreachable" in agents.log("i-d")
            and time.monotonic() - killed_at > STALE_AFTER + 0.5
        ),
        "i-d to find no controller",
        agents,
    )
    fleet.start()
    restarted_at = time.monotonic()

    # State intact: the states, the taint and its evidence, the identities. (The
    # last heartbeats before the kill may be lost, as they are written behind in
    # batches; a new report may already have landed: last_seq is not compared.)
    after = {i: instance(fleet, i) for i in trio}
    for instance_id in trio:
        was, now = before[instance_id], after[instance_id]
        assert (STATE[was.state], STATE[now.state]) in {
            ("tainted", "tainted"),
            ("conformant", "conformant"),
            ("conformant", "unknown"),
        }, (instance_id, now)
        assert now.taint == was.taint
        assert (now.image_digest, now.root, now.first_seen_ms, now.boot_id) == (
            was.image_digest,
            was.root,
            was.first_seen_ms,
            was.boot_id,
        )
    assert after[victim].taint == taint

    # The agents resume; the clean ones, sampled all along, are never tainted.
    def resumed() -> bool:
        now = {i: instance(fleet, i) for i in trio}
        for instance_id in clean:
            assert STATE[now[instance_id].state] in ("conformant", "unknown"), now[instance_id]
        return all(
            now[i].last_seq > before[i].last_seq
            and now[i].last_report_ms > before[i].last_report_ms
            for i in trio
        )

    assert_waited(resumed, "the agents to resume", agents)
    resumed_after = time.monotonic() - restarted_at
    expected = {"i-a": "conformant", "i-b": "tainted", "i-c": "conformant", "i-d": "conformant"}
    assert_waited(lambda: fleet.states(GROUP) == expected, "i-d conformant", agents)
    print(
        f"outage {restarted_at - killed_at:.2f}s;"
        f" the three reporting again {resumed_after:.2f}s after the restart,"
        f" i-d conformant after {time.monotonic() - restarted_at:.2f}s"
    )

    # Nothing on record taints the clean ones; the one real taint is there.
    assert instance(fleet, victim).taint == taint
    for instance_id in (*clean, "i-d"):
        assert not instance(fleet, instance_id).HasField("taint")
        assert taint_records(fleet, instance_id) == []
    assert taint_records(fleet, victim) == ["instance.drift", "instance.taint"]


def _scans_until_drift(log: str) -> int:
    """Scans an agent's log records up to and including its first drift (all, if none)."""
    scans = 0
    for line in log.splitlines():
        if not line.endswith("}"):
            continue  # not a record, or one still being written
        message = json.loads(line).get("message")
        if message == "scan done":
            scans += 1
        elif message == "root differs from the image's baseline":
            break
    return scans
