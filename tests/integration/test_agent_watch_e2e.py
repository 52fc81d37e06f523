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
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.image.bake import bake
from agent.manifest.policy import Policy
from controller.demo import fleet as support
from tests.e2e.support import Fleet

GROUP = "web"
WAIT = 30.0


class WatchingAgents:
    """``corral-agent run --interval 3600`` processes, each on its own copy of the tree."""

    def __init__(self, base: Path, *, tree: Path, bake_dir: Path, address: str) -> None:
        self.base = base
        self.tree = tree
        self.bake_dir = bake_dir
        self.address = address
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def root(self, instance_id: str) -> Path:
        return self.base / instance_id / "rootfs"

    def log(self, instance_id: str) -> str:
        return (self.base / instance_id / "agent.log").read_text(errors="replace")

    def start(self, instance_id: str) -> None:
        home = self.base / instance_id
        if not self.root(instance_id).exists():
            shutil.copytree(self.tree, self.root(instance_id), symlinks=True)
        argv = [
            sys.executable, "-m", "agent.daemon.cli", "run",
            "--controller", self.address,
            "--root", str(self.root(instance_id)),
            "--instance-id", instance_id,
            "--image-json", str(self.bake_dir / "image.json"),
            "--group", GROUP,
            "--interval", "3600",
            "--deadline", "2",
            "--nice", "0",
            "--data-dir", str(home / "state"),
        ]  # fmt: skip
        with open(home / "agent.log", "ab") as log:
            self.processes[instance_id] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def stop(self, instance_id: str) -> None:
        support.stop_process(self.processes.pop(instance_id), timeout=5.0)

    def stop_all(self) -> None:
        for instance_id in list(self.processes):
            self.stop(instance_id)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "controller")
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def agents(tmp_path: Path, fleet: Fleet) -> Iterator[WatchingAgents]:
    tree = tmp_path / "tree"
    support.write_sample_root(tree, files=20)
    bake_dir = tmp_path / "bake"
    bake(str(tree), str(bake_dir), policy=Policy(), name="app", version="1")
    fleet.register(bake_dir)
    image = json.loads((bake_dir / "image.json").read_text())
    fleet.group(GROUP, image["image_ref"], size=0, mode="observe")
    started = WatchingAgents(
        tmp_path / "agents", tree=tree, bake_dir=bake_dir, address=f"127.0.0.1:{fleet.port}"
    )
    (tmp_path / "agents").mkdir()
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


def _wait_state(fleet: Fleet, agents: WatchingAgents, instance_id: str, state: str) -> None:
    def reached() -> bool:
        return fleet.states(GROUP).get(instance_id) == state

    if not support.wait_for(reached, timeout=WAIT, step=0.05):
        pytest.fail(f"{instance_id} never {state}; agent log: {agents.log(instance_id)[-2000:]}")


def test_one_changed_file_taints_its_instance_without_a_scheduled_scan(
    fleet: Fleet, agents: WatchingAgents
) -> None:
    for instance_id in ("i-a", "i-b"):
        (agents.base / instance_id).mkdir()
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
    fleet: Fleet, agents: WatchingAgents
) -> None:
    (agents.base / "i-r").mkdir()
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
