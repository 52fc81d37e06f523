"""Drift → replacement with the local provider, against a real controller process.

Each test runs ``corral-controller serve`` (SQLite, short intervals) and real
agents in instance directories. Covered: a controller killed with SIGKILL in the
middle of a replacement resumes it after restart and launches nothing twice;
the breaker opens and ``corral group resume`` resumes; rollout and rollback move
a group between two digests within the budget; ``latest`` is refused; observe
mode replaces nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.artifact import build_artifact
from agent.policy import Policy
from controller.cli import demo_support as support
from controller.cli.client import FleetClient
from controller.cli.images import _read_bake, _requests
from controller.providers import LaunchSpec
from controller.providers.local import LocalConfig, LocalProvider
from protos.corral.v1 import agent_pb2, fleet_pb2

STATE = {v: k.removeprefix("INSTANCE_STATE_").lower() for k, v in agent_pb2.InstanceState.items()}


class Fleet:
    """A controller process on a data dir, restartable, with a client and two images."""

    def __init__(self, data: Path) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.port = support.free_port()
        self.config = support.write_config(
            data, grpc_port=self.port, metrics_port=support.free_port(), s=support.DemoSettings()
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.client = FleetClient(f"127.0.0.1:{self.port}", timeout=5.0)
        self.images: dict[str, str] = {}

    def start(self) -> None:
        self.process = support.start_controller(self.data, self.config)
        ok = support.wait_for(self._up, timeout=20, step=0.1)
        assert ok, (self.data / "controller.log").read_text()[-3000:]

    def _up(self) -> bool:
        try:
            self.client.call(self.client.stub.ListGroups, fleet_pb2.ListGroupsRequest())
        except Exception:
            return False
        return True

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            support.stop_process(self.process)
        support.stop_agents(self.data)
        self.client.close()

    def image(self, version: str) -> str:
        root = self.data / f"root-{version}"
        support.write_sample_root(root, files=5)
        (root / support.APP_CONF).write_text(f"version = {version}\n")
        out = self.data / "images" / version
        result = build_artifact(
            str(root), str(out), name="app", version=version, policy=Policy(),
            owner=(os.getuid(), os.getgid()),
        )  # fmt: skip
        LocalProvider(LocalConfig(data_dir=str(self.data))).import_artifact(str(out))
        image, manifest = _read_bake(out)
        self.client.stream(self.client.stub.RegisterImage, _requests(image, manifest))
        self.images[version] = result.image_ref
        return result.image_ref

    def group(self, name: str, ref: str, *, size: int, mode: str = "enforce") -> None:
        group = fleet_pb2.Group(
            name=name, desired_image_ref=ref, provider="local", desired_size=size,
            mode=fleet_pb2.GROUP_MODE_ENFORCE if mode == "enforce"
            else fleet_pb2.GROUP_MODE_OBSERVE,
        )  # fmt: skip
        self.client.call(self.client.stub.CreateGroup, fleet_pb2.CreateGroupRequest(group=group))

    def instances(self, group: str) -> list[fleet_pb2.Instance]:
        request = fleet_pb2.ListInstancesRequest(group=group)
        return list(self.client.call(self.client.stub.ListInstances, request).instances)

    def states(self, group: str) -> dict[str, str]:
        return {i.id: STATE[i.state] for i in self.instances(group)}

    def conformant(self, group: str, count: int, *, digest: str = "") -> bool:
        live = [i for i in self.instances(group) if STATE[i.state] != "retired"]
        good = [i for i in live if STATE[i.state] == "conformant"]
        on_image = all(i.image_digest == digest for i in live) if digest else True
        return len(good) == count == len(live) and on_image

    def drift(self, instance_id: str) -> None:
        conf = self.data / "instances" / instance_id / "rootfs" / support.APP_CONF
        with conf.open("a") as handle:
            handle.write("patched = true\n")

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", *args, "--controller",
             f"127.0.0.1:{self.port}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def rows(self) -> list[tuple[str, str, str]]:
        db = sqlite3.connect(f"file:{self.data / 'corral.db'}?mode=ro", uri=True)
        try:
            return list(db.execute("SELECT id, instance_id, phase FROM replacements"))
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def instance_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.data / "instances").iterdir() if p.is_dir())


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path / "fleet")
    running.start()
    yield running
    running.stop()


def test_kill_9_mid_replacement_then_restart_completes_exactly_one(fleet: Fleet) -> None:
    fleet.group("web", fleet.image("1"), size=2)
    assert support.wait_for(lambda: fleet.conformant("web", 2), timeout=30)
    victim = sorted(fleet.states("web"))[0]
    fleet.drift(victim)
    taint_rows = lambda: [r for r in fleet.rows() if r[1] == victim]  # noqa: E731
    assert support.wait_for(lambda: bool(taint_rows()), timeout=20, step=0.01)
    fleet.kill()  # right after the replacement was recorded (or launched)
    killed_in = taint_rows()[0][2]
    fleet.start()
    assert support.wait_for(lambda: fleet.states("web").get(victim) == "retired", timeout=30)
    assert support.wait_for(lambda: fleet.conformant("web", 2), timeout=30)
    assert [r[2] for r in taint_rows()] == ["done"], killed_in
    replacements = [i for i in fleet.instances("web") if i.replaces == victim]
    assert len(replacements) == 1
    # Exactly the two live instances have directories: nothing was launched twice.
    live = sorted(i for i, s in fleet.states("web").items() if s != "retired")
    assert fleet.instance_dirs() == live


def test_breaker_opens_then_resume_replaces(fleet: Fleet) -> None:
    fleet.group("web", fleet.image("1"), size=5)
    assert support.wait_for(lambda: fleet.conformant("web", 5), timeout=60)
    victims = sorted(fleet.states("web"))[:3]
    for victim in victims:  # 3 of 5: the first may start, the next taint opens the breaker
        fleet.drift(victim)
    opened = lambda: fleet.corral("group", "list", "--json")  # noqa: E731
    assert support.wait_for(lambda: '"breaker_open": true' in opened().stdout, timeout=20)
    time.sleep(1.5)
    states = fleet.states("web")
    assert sum(1 for v in victims if states[v] == "tainted") >= 2  # held while open
    started = [r for r in fleet.rows() if r[1] in victims]
    assert len(started) <= 1  # at most the one started before it opened (budget 1)
    result = fleet.corral("group", "resume", "web")
    assert result.returncode == 0, result.stderr
    retired = lambda: all(fleet.states("web")[v] == "retired" for v in victims)  # noqa: E731
    assert support.wait_for(retired, timeout=60)
    assert support.wait_for(lambda: fleet.conformant("web", 5), timeout=30)


def test_rollout_and_rollback_move_the_group_within_budget(fleet: Fleet) -> None:
    v1, v2 = fleet.image("1"), fleet.image("2")
    fleet.group("web", v1, size=3)
    assert support.wait_for(lambda: fleet.conformant("web", 3), timeout=30)
    refused = fleet.corral("rollout", "web", "app:latest")
    assert refused.returncode == 2 and "Pin it by digest" in refused.stderr
    assert fleet.corral("rollback", "web").returncode == 1  # no history yet
    for target, back in ((v2, False), (v1, True)):
        result = fleet.corral("rollback", "web") if back else fleet.corral("rollout", "web", target)
        assert result.returncode == 0, result.stderr
        digest = target.partition("@")[2]
        most_live = 0

        def done(digest: str = digest) -> bool:
            nonlocal most_live
            live = [i for i in fleet.instances("web") if STATE[i.state] != "retired"]
            most_live = max(most_live, len(live))
            return fleet.conformant("web", 3, digest=digest)

        assert support.wait_for(done, timeout=60, step=0.05)
        assert most_live <= 3 + 1  # budget 1: one surge instance at a time
    assert not [s for s in fleet.states("web").values() if s == "tainted"]


def test_observe_mode_replaces_nothing(fleet: Fleet) -> None:
    ref = fleet.image("1")
    fleet.group("watch", ref, size=0, mode="observe")
    provider = LocalProvider(LocalConfig(data_dir=str(fleet.data)))
    digest = ref.partition("@")[2]
    for n in range(2):
        provider.launch(
            LaunchSpec(group="watch", image_ref=ref, image_digest=digest, instance_id=f"w-{n}",
                       idempotency_key=f"hand-{n}", controller=f"127.0.0.1:{fleet.port}")
        )  # fmt: skip
    assert support.wait_for(lambda: fleet.conformant("watch", 2), timeout=30)
    fleet.drift("w-0")
    assert support.wait_for(lambda: fleet.states("watch")["w-0"] == "tainted", timeout=20)
    time.sleep(2.0)
    assert fleet.states("watch") == {"w-0": "tainted", "w-1": "conformant"}
    assert fleet.rows() == []
    assert fleet.instance_dirs() == ["w-0", "w-1"]
