"""Rows ↔ domain values, shared by the SQL stores so SQLite and PostgreSQL agree.

Taints and their evidence are stored as JSON text (paths written with
:func:`agent.paths.display_path`, which is reversible), so the schema stays
portable and an operator can read the table by hand.
"""

from __future__ import annotations

import json
from typing import Any

from agent.diff import Change, ChangeKind
from agent.manifest import Entry, EntryError, EntryType
from agent.paths import display_path, parse_display_path
from controller.domain.model import DriftKind, Footprint, Instance, InstanceState, Taint

INSTANCE_COLUMNS = (
    "id",
    "group_name",
    "state",
    "image_ref",
    "image_digest",
    "root",
    "first_seen",
    "last_report",
    "seq",
    "boot_id",
    "scanned_at_ms",
    "suspicious",
    "taint",
    "rss_bytes",
    "cpu_millis",
    "replaces",
)


def instance_to_row(instance: Instance) -> tuple[Any, ...]:
    return (
        instance.id,
        instance.group,
        instance.state.value,
        instance.image_ref,
        instance.image_digest,
        instance.root,
        instance.first_seen,
        instance.last_report,
        instance.seq,
        instance.boot_id,
        instance.scanned_at_ms,
        int(instance.suspicious),
        taint_to_json(instance.taint),
        instance.footprint.rss_bytes,
        instance.footprint.cpu_millis,
        instance.replaces,
    )


def instance_from_row(row: tuple[Any, ...]) -> Instance:
    values = dict(zip(INSTANCE_COLUMNS, row, strict=True))
    return Instance(
        id=values["id"],
        group=values["group_name"],
        state=InstanceState(values["state"]),
        image_ref=values["image_ref"],
        image_digest=values["image_digest"],
        root=bytes(values["root"]),
        first_seen=values["first_seen"],
        last_report=values["last_report"],
        seq=values["seq"],
        boot_id=values["boot_id"],
        scanned_at_ms=values["scanned_at_ms"],
        suspicious=bool(values["suspicious"]),
        taint=taint_from_json(values["taint"]),
        footprint=Footprint(rss_bytes=values["rss_bytes"], cpu_millis=values["cpu_millis"]),
        replaces=values["replaces"],
    )


def taint_to_json(taint: Taint | None) -> str | None:
    if taint is None:
        return None
    return json.dumps(
        {
            "kind": taint.kind.value,
            "reason": taint.reason,
            "actor": taint.actor,
            "at": taint.at,
            "evidence_verified": taint.evidence_verified,
            "evidence_truncated": taint.evidence_truncated,
            "changes": [_change_to_json(change) for change in taint.changes],
        },
        sort_keys=True,
    )


def taint_from_json(text: str | None) -> Taint | None:
    if text is None:
        return None
    data = json.loads(text)
    return Taint(
        kind=DriftKind(data["kind"]),
        reason=data["reason"],
        actor=data["actor"],
        at=data["at"],
        changes=tuple(_change_from_json(item) for item in data["changes"]),
        evidence_verified=data["evidence_verified"],
        evidence_truncated=data["evidence_truncated"],
    )


def _change_to_json(change: Change) -> dict[str, Any]:
    entry = change.entry
    return {
        "kind": change.kind.value,
        "path": display_path(change.path),
        "attributes": list(change.attributes),
        "entry": None
        if entry is None
        else [
            int(entry.type),
            entry.mode,
            entry.uid,
            entry.gid,
            entry.size,
            entry.sha256.hex(),
            display_path(entry.link_target),
            entry.rdev_major,
            entry.rdev_minor,
            int(entry.error),
        ],
    }


def _change_from_json(data: dict[str, Any]) -> Change:
    path = parse_display_path(data["path"])
    fields = data["entry"]
    entry = None
    if fields is not None:
        entry = Entry(
            path,
            EntryType(fields[0]),
            fields[1],
            fields[2],
            fields[3],
            fields[4],
            bytes.fromhex(fields[5]),
            parse_display_path(fields[6]),
            fields[7],
            fields[8],
            EntryError(fields[9]),
        )
    return Change(ChangeKind(data["kind"]), path, entry, tuple(data["attributes"]))
