"""Watch mode end to end: real controller and ``corral-agent run`` processes, one hour apart.

Agents run with ``--interval 3600``: no scheduled scan would come within the
test, so whatever the controller learns after the start-up scan came from
kernel events. One changed file must taint its instance, with the file as
verified evidence, as ``corral fleet show --json`` says; a change made while
an agent was stopped is caught by its start-up scan. Outcomes only: the time
it takes is measured by tests/bench/bench_realtime.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo import fleet as support
from tests.e2e.support import AgentProcesses, Fleet, sample_agents

GROUP = "web"
WAIT = 30.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "controller")
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def agents(tmp_path: Path, fleet: Fleet) -> Iterator[AgentProcesses]:
    started = sample_agents(tmp_path, fleet, files=20, group=GROUP, options=["--interval", "3600"])
    fleet.register(started.bake_dir)
    image = json.loads((started.bake_dir / "image.json").read_text())
    fleet.group(GROUP, image["image_ref"], size=0, mode="observe")
    try:
        yield started
    finally:
        started.stop_all()


def _shown(fleet: Fleet, instance_id: str) -> dict[str, object] | None:
    shown = fleet.corral("fleet", "show", instance_id, "--json")
    if shown.returncode != 0:
        return None
    document: dict[str, object] = json.loads(shown.stdout)
    return document


def _wait_state(fleet: Fleet, agents: AgentProcesses, instance_id: str, state: str) -> None:
    def reached() -> bool:
        return fleet.states(GROUP).get(instance_id) == state

    if not support.wait_for(reached, timeout=WAIT, step=0.05):
        pytest.fail(f"{instance_id} never {state}; agent log: {agents.log(instance_id)[-2000:]}")


def test_one_changed_file_taints_its_instance_without_a_scheduled_scan(
    fleet: Fleet, agents: AgentProcesses
) -> None:
    for instance_id in ("i-a", "i-b"):
        agents.start(instance_id)
    for instance_id in ("i-a", "i-b"):
        _wait_state(fleet, agents, instance_id, "conformant")
    conf = agents.root("i-b") / support.APP_CONF
    conf.write_text(conf.read_text() + "patched = true\n")
    _wait_state(fleet, agents, "i-b", "tainted")
    document = _shown(fleet, "i-b")
    assert document is not None and document["state"] == "tainted"
    taint = document["taint"]
    assert isinstance(taint, dict)
    assert taint["kind"] == "file" and taint["evidence_verified"] is True
    assert [(c["kind"], c["path"]) for c in taint["changes"]] == [
        ("modified", "/" + support.APP_CONF)
    ]
    assert fleet.states(GROUP)["i-a"] == "conformant"
    assert "watch mode on" in agents.log("i-b")


def test_a_change_made_while_the_agent_was_stopped_is_caught_at_start(
    fleet: Fleet, agents: AgentProcesses
) -> None:
    agents.start("i-r")
    _wait_state(fleet, agents, "i-r", "conformant")
    agents.stop("i-r")
    (agents.root("i-r") / "etc" / "hostname").write_text("changed while down\n")
    agents.start("i-r")  # same data dir and stat cache: its start-up scan must notice
    _wait_state(fleet, agents, "i-r", "tainted")
    document = _shown(fleet, "i-r")
    assert document is not None
    taint = document["taint"]
    assert isinstance(taint, dict)
    assert [c["path"] for c in taint["changes"]] == ["/etc/hostname"]
