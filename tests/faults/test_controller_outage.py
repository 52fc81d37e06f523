"""Outages: the controller's downtime never counts against anyone; silence never taints.

A real controller with the local provider runs a small enforced group (real
agents reporting every second). Guaranteed (docs/operations.md, "Faults: what
is guaranteed"):

- the controller down (SIGKILL) for less, or for longer, than the staleness
  limit: after it restarts no instance goes ``unknown`` and no group holds as
  partitioned — silence counts from when it listens again, and the agents
  reconnect within their own retry cap;
- the agents silent (frozen with SIGSTOP) for longer than the staleness limit
  while the controller runs: their instances go ``unknown``, the group holds,
  nothing is tainted and nothing is replaced; when they report again they are
  conformant;
- a replacement launched before a restart and still waiting for its new
  instance is not failed for the downtime: its startup grace counts listening
  time, so it completes with its first launch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.faults_controller_support import Controller, wait_until

pytestmark = pytest.mark.slow
GROUP = "outage"
SIZE = 3
STALE_AFTER = 6.0


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    made = Controller(
        tmp_path / "home",
        options={
            "stale_after": STALE_AFTER,
            "startup_grace": 8.0,
            "breaker_window": 0.001,  # one instance drifts in a group of one: no breaker
            "replacer_sweep_interval": 1.0,
        },
    )
    made.start()
    try:
        yield made
    finally:
        for pid in made.agent_pids().values():  # never leave one of ours frozen
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        made.stop()


def _live(controller: Controller) -> dict[str, str]:
    states = controller.states_or_none(GROUP) or {}
    return {i: s for i, s in states.items() if s != "retired"}


def _all_conformant(controller: Controller, count: int = SIZE) -> dict[str, str]:
    wait_until(
        lambda: list(_live(controller).values()) == ["conformant"] * count,
        timeout=90, what=f"{count} conformant instances", log=controller.log,
    )  # fmt: skip
    return _live(controller)


def _elapsed(since: float, seconds: float) -> bool:
    return time.monotonic() - since >= seconds


def _went(controller: Controller, state: str, *, after_seq: int = 0) -> list[str]:
    """Instances the audit log shows going ``state`` (in records after ``after_seq``)."""
    return [
        instance
        for seq, instance, data in controller.audit_records("instance.state")
        if seq > after_seq and data.get("to") == state
    ]


def _head(controller: Controller) -> int:
    records = controller.audit_records("instance.state")
    return records[-1][0] if records else 0


@pytest.mark.parametrize("down_for", [0.3, 1.5], ids=["shorter", "longer"])
def test_a_controller_outage_never_makes_instances_unknown(
    controller: Controller, down_for: float
) -> None:
    controller.group(GROUP, controller.image("1"), size=SIZE)
    _all_conformant(controller)
    seqs = {i.id: i.last_seq for i in controller.instances(GROUP)}
    head = _head(controller)

    killed = time.monotonic()
    controller.kill()
    wait_until(
        lambda: _elapsed(killed, down_for * STALE_AFTER),
        timeout=60, what=f"{down_for} x the staleness limit of downtime",
    )  # fmt: skip
    controller.start()

    def all_reported_again() -> bool:
        instances = controller.instances(GROUP)
        assert all(i.state != 6 for i in instances), [(i.id, i.state) for i in instances]
        return all(i.last_seq > seqs[i.id] for i in instances if i.id in seqs)

    wait_until(
        all_reported_again, timeout=STALE_AFTER, what="every agent reporting again",
        log=controller.log,
    )  # fmt: skip
    assert _went(controller, "unknown", after_seq=head) == []
    assert sorted(_live(controller).values()) == ["conformant"] * SIZE
    assert "partitioned" not in controller.log()
    assert [r for r in controller.replacement_rows() if r["kind"] != "scale"] == []


def test_silent_agents_go_unknown_but_are_never_tainted_or_replaced(
    controller: Controller,
) -> None:
    controller.group(GROUP, controller.image("1"), size=SIZE)
    before = _all_conformant(controller)
    rows_before = len(controller.replacement_rows())
    pids = controller.agent_pids()
    assert sorted(pids) == sorted(before)
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: _live(controller) == dict.fromkeys(before, "unknown"),
            timeout=STALE_AFTER * 4, what="every silent instance unknown", log=controller.log,
        )  # fmt: skip
        wait_until(
            lambda: "partitioned" in controller.log(),
            timeout=30, what="the group holding as partitioned", log=controller.log,
        )  # fmt: skip
        assert len(controller.replacement_rows()) == rows_before  # no replacement storm
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGCONT)
    assert _all_conformant(controller) == before
    assert len(controller.replacement_rows()) == rows_before
    assert _went(controller, "tainted") == []
    assert controller.audit_records("instance.taint") == []


def test_a_pending_replacement_is_not_failed_for_the_controllers_downtime(
    controller: Controller,
) -> None:
    controller.group(GROUP, controller.image("1"), size=1)
    (old,) = _all_conformant(controller, 1)
    conf = controller.conf(old)
    conf.write_bytes(conf.read_bytes() + b"patched = true\n")

    def waiting() -> bool:
        rows = [r for r in controller.replacement_rows() if r["instance_id"] == old]
        return bool(rows) and rows[0]["phase"] == "waiting_conformant"

    # Killed while the new instance starts: it cannot report until the controller is back.
    wait_until(waiting, timeout=60, what="the replacement launched", log=controller.log)
    killed = time.monotonic()
    controller.kill()
    (row,) = [r for r in controller.replacement_rows() if r["instance_id"] == old]
    new = row["new_instance_id"]
    assert (row["phase"], row["attempt"]) == ("waiting_conformant", 1)
    wait_until(
        lambda: _elapsed(killed, 8.0 * 1.5),  # down for longer than the startup grace
        timeout=60, what="downtime beyond the startup grace",
    )  # fmt: skip
    controller.start()

    wait_until(
        lambda: any(
            r["instance_id"] == old and r["phase"] == "done" for r in controller.replacement_rows()
        ),
        timeout=60, what="the replacement done", log=controller.log,
    )  # fmt: skip
    (row,) = [r for r in controller.replacement_rows() if r["instance_id"] == old]
    assert (row["new_instance_id"], row["attempt"]) == (new, 1)  # its first launch, kept
    assert _live(controller) == {new: "conformant"}
    assert [n for n in controller.instance_dirs() if not n.startswith(".")] == [new]
