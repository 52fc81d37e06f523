"""Drift → replacement with the local provider, against a real controller process.

Each test runs ``corral-controller serve`` (SQLite, short intervals) and real
agents in instance directories. Covered: a controller killed with SIGKILL in the
middle of a replacement resumes it after restart and launches nothing twice;
the breaker opens and ``corral group resume`` resumes; rollout and rollback move
a group between two digests within the budget; ``latest`` is refused; observe
mode replaces nothing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo import fleet as support
from controller.providers import LaunchSpec
from controller.providers.local import LocalConfig, LocalProvider
from tests.e2e.support import STATE, Fleet


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

    def taint_rows() -> list[tuple[str, str, str]]:
        return [r for r in fleet.rows() if r[1] == victim]

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

    def opened() -> subprocess.CompletedProcess[str]:
        return fleet.corral("group", "list", "--json")

    assert support.wait_for(lambda: '"breaker_open": true' in opened().stdout, timeout=20)
    time.sleep(1.5)
    states = fleet.states("web")
    assert sum(1 for v in victims if states[v] == "tainted") >= 2  # held while open
    started = [r for r in fleet.rows() if r[1] in victims]
    assert len(started) <= 1  # at most the one started before it opened (budget 1)
    result = fleet.corral("group", "resume", "web")
    assert result.returncode == 0, result.stderr

    def retired() -> bool:
        return all(fleet.states("web")[v] == "retired" for v in victims)

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
