"""The diff of two manifests: which entries were added, removed or modified, and how."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from agent.manifest.format import Entry, EntryType


class ChangeKind(Enum):
    ADDED = "added"
    REMOVED = "removed"
    MODIFIED = "modified"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: the live entry (None when removed) and the attributes that differ."""

    kind: ChangeKind
    path: bytes
    entry: Entry | None
    attributes: tuple[str, ...] = ()


def changed_attributes(old: Entry, new: Entry) -> tuple[str, ...]:
    """The attribute names that differ between two entries for the same path.

    Names, in this order: ``type``, ``mode``, ``uid``, ``gid``, ``size``,
    ``content``, ``target``, ``device``, ``readable``. When the type changed, the
    type-specific attributes (size, content, target, device) are not listed: they
    describe different kinds of objects and would only repeat "type".
    """
    changed = []
    if old.type != new.type:
        changed.append("type")
    if old.mode != new.mode:
        changed.append("mode")
    if old.uid != new.uid:
        changed.append("uid")
    if old.gid != new.gid:
        changed.append("gid")
    if old.type != new.type:
        if old.error != new.error:
            changed.append("readable")
        return tuple(changed)
    if old.size != new.size:
        changed.append("size")
    if old.sha256 != new.sha256:
        changed.append("target" if new.type == EntryType.SYMLINK else "content")
    if old.link_target != new.link_target and "target" not in changed:
        changed.append("target")
    if (old.rdev_major, old.rdev_minor) != (new.rdev_major, new.rdev_minor):
        changed.append("device")
    if old.error != new.error:
        changed.append("readable")
    return tuple(changed)


def diff(baseline: Sequence[Entry], live: Sequence[Entry]) -> list[Change]:
    """Changes that turn ``baseline`` into ``live``; both sorted by path, unique."""
    changes: list[Change] = []
    i = j = 0
    while i < len(baseline) or j < len(live):
        old = baseline[i] if i < len(baseline) else None
        new = live[j] if j < len(live) else None
        if new is None or (old is not None and old.path < new.path):
            assert old is not None
            changes.append(Change(ChangeKind.REMOVED, old.path, None))
            i += 1
        elif old is None or new.path < old.path:
            changes.append(Change(ChangeKind.ADDED, new.path, new))
            j += 1
        else:
            if old != new:
                changes.append(
                    Change(ChangeKind.MODIFIED, new.path, new, changed_attributes(old, new))
                )
            i += 1
            j += 1
    return changes
