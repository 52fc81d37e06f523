"""Is the drift evidence an agent sent consistent with the root it reported?

The registered manifest with the reported changes applied must hash to the
reported root. A :class:`ManifestIndex` (the manifest's leaf hashes by path and
an incremental :class:`~agent.merkle.RootIndex`) makes the check cost
O(changes): touched buckets are re-hashed, then the index is put back as it was.
An agent whose evidence does not add up is lying or broken; the caller refuses
the evidence and flags the instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.diff import ChangeKind
from agent.manifest import Entry, leaf_hash
from agent.merkle import RootIndex
from controller.domain.model import Evidence
from controller.errors import InvalidArgumentError


class ManifestIndex:
    """A registered manifest's leaves, indexed for O(changes) evidence checks."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.leaves: dict[bytes, bytes] = {entry.path: leaf_hash(entry) for entry in entries}
        self.roots = RootIndex(self.leaves.values())

    def root(self) -> bytes:
        return self.roots.root()


@dataclass(frozen=True)
class Verdict:
    """Evidence that passed: ``verified`` is False when it was truncated (partly checked)."""

    verified: bool
    truncated: bool


def check_evidence(index: ManifestIndex, evidence: Evidence, *, reported_root: bytes) -> Verdict:
    """Check ``evidence`` against the manifest and ``reported_root``.

    Raises InvalidArgumentError (reason ``evidence_inconsistent``) when a change does
    not fit the manifest (removing a path it lacks, adding one it has, a path
    twice) or, for complete evidence, when the result does not hash to the root.
    Truncated evidence can only be checked change by change.
    """
    remove, add = _leaf_moves(index, evidence)
    if evidence.truncated:
        if evidence.total_changes < len(evidence.changes):
            raise _inconsistent(
                f"total_changes {evidence.total_changes} is less than the "
                f"{len(evidence.changes)} changes sent"
            )
        return Verdict(verified=False, truncated=True)
    index.roots.replace(remove=remove, add=add)
    try:
        root = index.roots.root()
    finally:
        index.roots.replace(remove=add, add=remove)
    if root != reported_root:
        raise _inconsistent(
            f"the image's manifest with the {len(evidence.changes)} reported changes "
            "applied does not hash to the reported root"
        )
    return Verdict(verified=True, truncated=False)


def _leaf_moves(index: ManifestIndex, evidence: Evidence) -> tuple[list[bytes], list[bytes]]:
    remove: list[bytes] = []
    add: list[bytes] = []
    seen: set[bytes] = set()
    for change in evidence.changes:
        if change.path in seen:
            raise _inconsistent(f"path {change.path!r} appears twice in the evidence")
        seen.add(change.path)
        baseline = index.leaves.get(change.path)
        if change.kind == ChangeKind.ADDED and baseline is not None:
            raise _inconsistent(f"{change.path!r} is reported added but the image has it")
        if change.kind != ChangeKind.ADDED and baseline is None:
            raise _inconsistent(
                f"{change.path!r} is reported {change.kind.value} but the image lacks it"
            )
        if baseline is not None:
            remove.append(baseline)
        if change.entry is not None:
            add.append(leaf_hash(change.entry))
    return remove, add


def _inconsistent(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"drift evidence rejected: {message}", reason="evidence_inconsistent"
    )
