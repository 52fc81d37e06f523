"""Rows ↔ domain values, shared by the SQL stores so SQLite and PostgreSQL agree.

Taints and their evidence are stored as JSON text (paths written with
:func:`agent.paths.display_path`, which is reversible), so the schema stays
portable and an operator can read the table by hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryError, EntryType
from agent.manifest.report import Footprint
from agent.paths import display_path, parse_display_path
from controller.domain.model import (
    DriftKind,
    Group,
    GroupMode,
    ImageRecord,
    Instance,
    InstanceState,
    Taint,
)

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
    "version",
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
        instance.version,
    )


def instance_from_row(row: Sequence[Any]) -> Instance:
    values = named(INSTANCE_COLUMNS, row)
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
        version=int(values["version"]),
    )


def taint_to_json(taint: Taint | None) -> str | None:
    if taint is None:
        return None
    data: dict[str, Any] = {
        "kind": taint.kind.value,
        "reason": taint.reason,
        "actor": taint.actor,
        "at": taint.at,
        "evidence_verified": taint.evidence_verified,
        "evidence_truncated": taint.evidence_truncated,
        "changes": [_change_to_json(change) for change in taint.changes],
    }
    if taint.baseline_mismatch:  # written only when set: older rows stay byte-identical
        data["baseline_mismatch"] = True
    return json.dumps(data, sort_keys=True)


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
        baseline_mismatch=data.get("baseline_mismatch", False),
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


IMAGE_COLUMNS = (
    "name, version, ref, digest, manifest_digest, root, entry_count, byte_count, "
    "registered_at, registered_by"
)
GROUP_COLUMNS = (
    "name, desired_image_ref, desired_image_digest, mode, provider, "
    "max_concurrent_replacements, desired_size, breaker_open, image_history, generation, "
    "breaker_opened_at, breaker_resumed_at, breaker_reason, past_images, version"
)


def image_to_row(image: ImageRecord) -> tuple[object, ...]:
    return (
        image.name,
        image.version,
        image.ref,
        image.digest,
        image.manifest_digest,
        image.root,
        image.entry_count,
        image.byte_count,
        image.registered_at,
        image.registered_by,
    )


def image_from_row(row: Sequence[Any]) -> ImageRecord:
    v = named(IMAGE_COLUMNS, row)
    return ImageRecord(
        name=str(v["name"]),
        version=str(v["version"]),
        ref=str(v["ref"]),
        digest=str(v["digest"]),
        manifest_digest=str(v["manifest_digest"]),
        root=bytes(v["root"]),
        entry_count=int(v["entry_count"]),
        byte_count=int(v["byte_count"]),
        registered_at=float(v["registered_at"]),
        registered_by=str(v["registered_by"]),
    )


def group_to_row(group: Group) -> tuple[object, ...]:
    return (
        group.name,
        group.desired_image_ref,
        group.desired_image_digest,
        group.mode.value,
        group.provider,
        group.max_concurrent_replacements,
        group.desired_size,
        int(group.breaker_open),
        json.dumps(list(group.image_history)),
        group.generation,
        group.breaker_opened_at,
        group.breaker_resumed_at,
        group.breaker_reason,
        json.dumps(list(group.past_images)),
        group.version,
    )


def group_from_row(row: Sequence[Any]) -> Group:
    v = named(GROUP_COLUMNS, row)
    opened_at, resumed_at = v["breaker_opened_at"], v["breaker_resumed_at"]
    return Group(
        name=str(v["name"]),
        desired_image_ref=str(v["desired_image_ref"]),
        desired_image_digest=str(v["desired_image_digest"]),
        mode=GroupMode(v["mode"]),
        provider=str(v["provider"]),
        max_concurrent_replacements=int(v["max_concurrent_replacements"]),
        desired_size=int(v["desired_size"]),
        breaker_open=bool(v["breaker_open"]),
        image_history=tuple(json.loads(str(v["image_history"]))),
        generation=int(v["generation"]),
        breaker_opened_at=None if opened_at is None else float(opened_at),
        breaker_resumed_at=None if resumed_at is None else float(resumed_at),
        breaker_reason=str(v["breaker_reason"]),
        past_images=tuple(json.loads(str(v["past_images"]))),
        version=int(v["version"]),
    )


def named(columns: str | Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A row from a ``SELECT`` of ``columns`` (a list, or as written in SQL) by column name."""
    names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else columns
    return dict(zip(names, row, strict=True))
