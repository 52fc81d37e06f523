"""A store that is not whole is refused at start, ``--init`` starts afresh, backups restore.

A controller that served an empty fleet from a damaged store would forget every
taint and tell auditors nothing ever happened. Each case here damages a real
store the way faults do — cut short, emptied, its write-ahead log lost after a
SIGKILL, a b-tree page overwritten, or held by another running controller —
and runs the real ``corral-controller serve``: it must stop with exit 1 and
exactly one line of output (no traceback). ``--init`` then moves the files into
``damaged-*/`` and starts an empty store (and refuses to set a sound one
aside). ``corral backup`` of a running controller restores into a fresh data
dir with the same instances and the same audit head (docs/operations.md, "A
store that will not start" and "Backups").
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.demo.fleet import APP_CONF
from tests.faults.faults_controller_support import Controller, corral, wait_until

GROUP = "faults"
INSTANCES = ("store-a", "store-b")


def _populate(controller: Controller, *, taint: str = "") -> None:
    """An image, a group and the instances conformant (``taint`` drifted, observe mode);
    the agents are stopped again."""
    controller.group(GROUP, controller.image("1"), size=0, mode="observe")
    agents = [controller.agent(name) for name in INSTANCES]
    try:
        for agent in agents:
            if agent.instance_id == taint:
                conf = agent.root / APP_CONF
                conf.write_bytes(conf.read_bytes() + b"patched = true\n")
            agent.start()
        wanted = {name: "tainted" if name == taint else "conformant" for name in INSTANCES}
        wait_until(
            lambda: controller.states_or_none(GROUP) == wanted,
            timeout=60, what=f"instances {wanted}", log=controller.log,
        )  # fmt: skip
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A populated store, stopped cleanly (its log checkpointed into corral.db)."""
    home = tmp_path_factory.mktemp("template")
    controller = Controller(home)
    controller.start()
    try:
        _populate(controller)
        assert controller.terminate() == 0, controller.log()
    finally:
        controller.stop()
    return controller.data


def _copy_store(template: Path, home: Path) -> Controller:
    controller = Controller(home)
    for name in ("corral.db", "corral-store.json"):
        shutil.copy2(template / name, controller.data / name)
    return controller


def _assert_refused(result: subprocess.CompletedProcess[str], *, says: str) -> None:
    output = (result.stdout + result.stderr).strip()
    lines = output.splitlines()
    assert result.returncode == 1, output
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert says in lines[0], lines[0]


def _truncate(data: Path) -> None:
    db = data / "corral.db"
    with db.open("r+b") as handle:
        handle.truncate(db.stat().st_size // 2)


def _empty(data: Path) -> None:
    (data / "corral.db").write_bytes(b"")


def _damage_instances_page(data: Path) -> None:
    """Overwrite the middle of the instances table's root b-tree page (quick_check reads it)."""
    db = data / "corral.db"
    conn = sqlite3.connect(db)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'instances'"
        ).fetchone()
    finally:
        conn.close()
    with db.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\x0d\xff\xff\xff\xff\x00")  # a leaf page header with nonsense offsets
        handle.seek((root - 1) * page_size + page_size // 2)
        handle.write(b"\xa5" * 64)


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "store refused"),
    "emptied": (_empty, "empty (0 bytes)"),
    "damaged-page": (_damage_instances_page, "store refused"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_store_is_refused_and_init_starts_afresh(
    template: Path, tmp_path: Path, damage: str
) -> None:
    controller = _copy_store(template, tmp_path / "home")
    damaged_with, says = DAMAGES[damage]
    damaged_with(controller.data)
    damaged_bytes = (controller.data / "corral.db").read_bytes()

    _assert_refused(controller.run_to_exit(), says=says)
    assert (controller.data / "corral.db").read_bytes() == damaged_bytes  # left as found

    controller.start("--init")
    try:
        assert controller.instances() == []
        (aside,) = controller.data.glob("damaged-*")
        assert (aside / "corral.db").read_bytes() == damaged_bytes  # set aside, not deleted
        verified = controller.corral("audit", "verify", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        controller.stop()


def test_a_sound_store_is_never_set_aside_by_init(template: Path, tmp_path: Path) -> None:
    controller = _copy_store(template, tmp_path / "home")
    _assert_refused(controller.run_to_exit("--init"), says="sound store")
    assert not list(controller.data.glob("damaged-*"))
    controller.start()
    try:
        assert sorted(controller.states(GROUP)) == sorted(INSTANCES)
    finally:
        controller.stop()


def test_a_lost_write_ahead_log_after_a_kill_is_refused(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "home")
    controller.start()
    try:
        _populate(controller)
        controller.kill()
        wal = controller.data / "corral.db-wal"
        assert wal.exists() and wal.stat().st_size > 0  # the taint-free fleet lives here
        wal.unlink()
        (controller.data / "corral.db-shm").unlink(missing_ok=True)
        _assert_refused(controller.run_to_exit(), says="corral.db-wal is missing")
    finally:
        controller.stop()


def test_a_data_dir_held_by_a_running_controller_is_refused(tmp_path: Path) -> None:
    first = Controller(tmp_path / "first")
    first.start()
    second = Controller(tmp_path / "second", data=first.data)
    try:
        _assert_refused(second.run_to_exit(), says="in use by another controller")
        assert first.up()
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Controller]:
    controller = Controller(tmp_path / "home", options={"stale_after": 600.0})
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def test_a_backup_of_a_running_controller_restores_the_same_fleet_and_audit_head(
    running: Controller, tmp_path: Path
) -> None:
    _populate(running, taint="store-b")
    before = running.states()
    out = tmp_path / "corral-backup.db"
    made = corral("backup", "--data-dir", str(running.data), str(out), "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    summary = json.loads(made.stdout)
    assert summary["instances"] == len(INSTANCES)
    live = json.loads(running.corral("audit", "verify", "--json").stdout)
    assert (summary["audit_seq"], summary["audit_head"]) == (live["last_seq"], live["last_hash"])

    restored = Controller(tmp_path / "restored", options={"stale_after": 600.0})
    shutil.copy2(out, restored.data / "corral.db")
    restored.start()
    try:
        assert restored.states() == before
        shown = json.loads(restored.corral("fleet", "show", "store-b", "--json").stdout)
        assert APP_CONF in json.dumps(shown)  # the taint's evidence came along
        verified = restored.corral("audit", "verify", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        result = json.loads(verified.stdout)
        assert (result["last_seq"], result["last_hash"]) == (live["last_seq"], live["last_hash"])
    finally:
        restored.stop()
