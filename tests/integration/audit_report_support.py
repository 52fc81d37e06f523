"""A scripted fleet history for the report tests, played through the real controller.

Two groups (``web``, ``api``) on a SQLite store in a data dir, a fake clock:
launches, a file drift whose evidence carries hostile paths, a manual taint
whose reason and actor are hostile, a replacement through the replacement
engine's effects, a rollout that makes an instance drift from its image, a
rollback, and the breaker opening. ``corral audit conformance`` and ``history``
over the same data dir are the independent answers the report is checked
against.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from agent.manifest.diff import diff
from agent.manifest.format import Entry, EntryType, root_of
from agent.manifest.report import Evidence, Report
from controller.cli.main import main
from controller.domain.breaker import BreakerState
from controller.domain.model import Group, GroupMode, ImageRecord
from controller.domain.replacement_actions import (
    Complete,
    Kind,
    Launch,
    OpenBreaker,
    StartReplacement,
    Strategy,
    Terminate,
)
from controller.engine.effects import Effects
from controller.engine.groups import rollback_group, rollout_group
from controller.providers.base import InstanceState as ProviderState
from controller.providers.base import (
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
)
from tests.integration.audit_support import ENTRIES, START, Fleet, make_fleet, ms, open_store

HOSTILE_PATH = b"/etc/<script>alert('path')</script>\x1b[31m\xff"
HOSTILE_PATH_SHOWN = "/etc/<script>alert('path')</script>%1B[31m%FF"
HOSTILE_REASON = "<script>alert('reason')</script> suspected & <b>bold</b>"
HOSTILE_ACTOR = "mallory<img src=x>"


class _Provider(Provider):
    """Launches succeed at once; the test plays the new instance's agent."""

    name = "scripted"
    replacement_strategy = ReplacementStrategy.SURGE

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        return LaunchedInstance(spec.instance_id, spec.group, ProviderState.RUNNING)

    def terminate(self, instance_id: str) -> None:
        pass

    def list(self, group: str) -> list[LaunchedInstance]:
        return []

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        return None


@dataclass
class Scripted:
    """The data dir holding the history and the moments (epoch ms) the script passed."""

    data_dir: Path
    moments: dict[str, int] = field(default_factory=dict)
    replacement: str = ""

    @property
    def period(self) -> tuple[int, int]:
        return self.moments["from"], self.moments["to"]


def _report(
    fleet: Fleet,
    instance: str,
    group: str,
    image: ImageRecord,
    *,
    seq: int,
    live: list[Entry] | None = None,
) -> None:
    evidence = None
    root = image.root
    if live is not None:
        changes = tuple(diff(ENTRIES, sorted(live)))
        evidence = Evidence(changes=changes, total_changes=len(changes))
        root = root_of(sorted(live))
    fleet.service.report(
        Report(
            instance_id=instance,
            group=group,
            image_ref=image.ref,
            image_digest=image.digest,
            root=root,
            seq=seq,
            boot_id="boot",
            scanned_at_ms=seq,
        ),
        evidence,
    )


def play_history(data_dir: Path) -> Scripted:
    """Play the scripted history into ``data_dir`` (SQLite store) and close the store."""
    store = open_store("sqlite", data_dir)
    fleet = make_fleet(store)
    out = Scripted(data_dir)
    clock = fleet.clock
    v1, v2 = fleet.image("1"), fleet.image("2")
    for name in ("web", "api"):
        fleet.service.create_group(
            Group(name=name, desired_image_ref=v1.ref, mode=GroupMode.ENFORCE), actor="alice"
        )
    for instance, group in (("w-1", "web"), ("w-2", "web"), ("a-1", "api"), ("a-2", "api")):
        _report(fleet, instance, group, v1, seq=1)
    clock.advance(30)
    out.moments["from"] = ms(clock())  # the report's period starts here
    clock.advance(30)
    hostile = Entry(HOSTILE_PATH, EntryType.REGULAR, 0o644, 0, 0, 3, b"\x09" * 32)
    _report(fleet, "w-1", "web", v1, seq=2, live=[*ENTRIES, hostile])  # file drift at +60 s
    out.moments["file taint"] = ms(clock())
    clock.advance(30)
    fleet.service.taint("a-1", reason=HOSTILE_REASON, actor=HOSTILE_ACTOR)  # +90 s
    out.moments["manual taint"] = ms(clock())
    clock.advance(30)
    out.replacement = _replace(fleet, "w-1", "web", v1, out)  # +120 .. +150 s
    clock.advance(50)
    rollout_group(fleet.store, "web", v2.ref, actor="carol", clock=clock)  # +200 s
    out.moments["rollout"] = ms(clock())
    clock.advance(20)
    rogue_digest = "sha256:" + "e" * 64
    rogue = replace(v1, ref=f"web@{rogue_digest}", digest=rogue_digest)
    _report(fleet, "w-2", "web", rogue, seq=2)  # an unregistered image: image drift at +220 s
    out.moments["image taint"] = ms(clock())
    clock.advance(40)
    rollback_group(fleet.store, "web", actor="carol", clock=clock)  # +260 s
    out.moments["rollback"] = ms(clock())
    clock.advance(40)
    _open_breaker(fleet, "api")  # +300 s
    out.moments["breaker"] = ms(clock())
    clock.advance(50)
    out.moments["to"] = ms(clock())  # +350 s
    clock.advance(50)
    _report(fleet, "a-2", "api", v1, seq=2, live=[*ENTRIES[1:]])  # after the period: not in it
    store.close()
    return out


def _effects(fleet: Fleet) -> Effects:
    return Effects(
        fleet.store, clock=fleet.clock, metrics=fleet.service.metrics, controller_address="x"
    )


def _apply(fleet: Fleet, group_name: str, action: object) -> None:
    group = fleet.store.get_group(group_name)
    assert group is not None
    asyncio.run(_effects(fleet).apply(action, group=group, provider=_Provider()))  # type: ignore[arg-type]


def _replace(fleet: Fleet, old: str, group: str, image: ImageRecord, out: Scripted) -> str:
    key = f"{group}/taint/{old}"
    _apply(fleet, group, StartReplacement(group, old, Kind.TAINT, key, Strategy.SURGE, image.ref))
    _apply(fleet, group, Launch(key, "launch-1", image.ref, 1))
    row = fleet.store.get_replacement(key)
    assert row is not None and row.new_instance_id is not None
    new = row.new_instance_id
    out.moments["replacement launched"] = ms(fleet.clock())
    fleet.clock.advance(30)
    _report(fleet, new, group, image, seq=1)
    out.moments["replacement conformant"] = ms(fleet.clock())
    _apply(fleet, group, Terminate(key, old))
    _apply(fleet, group, Complete(key, new))
    return new


def _open_breaker(fleet: Fleet, group: str) -> None:
    state = BreakerState(open=True, opened_at=fleet.clock(), reason="1 of 2 tainted")
    _apply(fleet, group, OpenBreaker(group, state, "1 of 2 tainted"))


def corral(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``corral`` in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def corral_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = corral(capsys, *argv)
    assert code == 0, err
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


__all__ = ["START", "Scripted", "corral", "corral_json", "play_history"]
