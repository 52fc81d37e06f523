"""The controller SIGKILLed at every step of a replacement: no double launch, nothing lost.

A real controller with the local provider (instances are directories with a
real agent each) replaces a drifted instance. The test watches the stored
replacement row in a tight loop and SIGKILLs the controller the moment the row
reaches the step under test — recorded, launching, waiting for the new
instance, terminating the old one — then starts it again on the same files.
Guaranteed (docs/operations.md, "Faults: what is guaranteed"): the replacement
completes, exactly one instance is launched for it (found again by its
idempotency key), the taint and every audit record survive, and the chain
verifies. A terminate cut short leaves no ``.gone-*`` tree after the next start.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.fleet import APP_CONF
from tests.faults.faults_controller_support import Controller, wait_until

GROUP = "kill"
STEPS = ("recorded", "launching", "waiting_conformant", "terminating_old")
LATER = {step: set(STEPS[i + 1 :]) | {"done"} for i, step in enumerate(STEPS)}


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    # Every step drifts the one instance again: keep the breaker (tested elsewhere) shut.
    made = Controller(tmp_path / "home", options={"stale_after": 600.0, "breaker_window": 0.001})
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _live(controller: Controller) -> dict[str, str]:
    states = controller.states_or_none(GROUP) or {}
    return {i: s for i, s in states.items() if s != "retired"}


def _one_conformant(controller: Controller) -> str:
    wait_until(
        lambda: list(_live(controller).values()) == ["conformant"],
        timeout=90, what="one conformant instance", log=controller.log,
    )  # fmt: skip
    (instance_id,) = _live(controller)
    return instance_id


def _kill_at(controller: Controller, old: str, step: str) -> str | None:
    """SIGKILL the controller as soon as the replacement of ``old`` is at ``step``.

    Returns the step the row was at when killed (None: it went past ``step`` unseen).
    """
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = [r for r in controller.replacement_rows() if r["instance_id"] == old]
        if rows:
            phase = str(rows[0]["phase"])
            at_step = phase == step and not (
                step == "terminating_old" and rows[0]["old_terminated"]
            )
            if at_step:
                os.kill(controller.pid, signal.SIGKILL)
                assert controller.process is not None  # it has a pid
                controller.process.wait(timeout=20)
                return step
            if phase in LATER[step]:
                return None
    raise AssertionError(f"the replacement of {old} never reached {step}\n{controller.log()}")


def _documents(controller: Controller) -> dict[str, str]:
    """Instance dir -> idempotency key, as the local provider stored them."""
    found: dict[str, str] = {}
    for name in controller.instance_dirs():
        path = controller.home / "instances" / name / "instance.json"
        if not name.startswith(".") and path.exists():
            found[name] = str(json.loads(path.read_text())["idempotency_key"])
    return found


@pytest.mark.slow
def test_a_kill_at_every_replacement_step_launches_once_and_completes(
    controller: Controller,
) -> None:
    controller.group(GROUP, controller.image("1"), size=1)
    current = _one_conformant(controller)
    killed_at: list[str] = []
    for step in STEPS:
        for _attempt in range(3):  # a step only milliseconds long may pass unseen: again
            old = current
            conf = controller.conf(old)
            conf.write_bytes(conf.read_bytes() + b"patched = true\n")
            seen = _kill_at(controller, old, step)
            if seen is None:  # it went past unseen: let this one finish, drift the next
                current = _finished(controller, old)
                continue
            killed_at.append(step)
            leftover = controller.home / "instances" / ".gone-interrupted"
            (leftover / "rootfs").mkdir(parents=True, exist_ok=True)  # as a cut terminate leaves
            controller.start()
            current = _finished(controller, old)
            assert not [n for n in controller.instance_dirs() if n.startswith(".gone-")]
            break
    assert killed_at == list(STEPS), f"killed at {killed_at}"
    verified = controller.corral("audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _finished(controller: Controller, old: str) -> str:
    """Wait for the replacement of ``old`` to be done; check it launched exactly once and
    lost nothing; returns the new instance."""
    wait_until(
        lambda: any(
            r["instance_id"] == old and r["phase"] == "done" for r in controller.replacement_rows()
        ),
        timeout=120, what=f"the replacement of {old} done", log=controller.log,
    )  # fmt: skip
    (row,) = [r for r in controller.replacement_rows() if r["instance_id"] == old]
    new = str(row["new_instance_id"])
    wait_until(
        lambda: _live(controller) == {new: "conformant"},
        timeout=90, what=f"{new} the one conformant instance", log=controller.log,
    )  # fmt: skip
    assert controller.states(GROUP)[old] == "retired"
    shown = json.loads(controller.corral("fleet", "show", old, "--json").stdout)
    assert APP_CONF in json.dumps(shown["taint"])  # the taint and its evidence survive
    # One instance per launch key, and only the live one left on the provider.
    documents = _documents(controller)
    assert list(documents) == [new], documents
    keys = [str(r["id"]) for r in controller.replacement_rows()]
    assert len(keys) == len(set(keys))
    return new
