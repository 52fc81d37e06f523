"""Is the drift evidence an agent sent consistent with the root it reported?

The registered manifest with the reported changes applied must hash to the
reported root. A :class:`ManifestIndex` (the manifest's leaf hashes by path and
an incremental :class:`~agent.manifest.merkle.RootIndex`) makes the check cost
O(changes): touched buckets are re-hashed, then the index is put back as it was.
An agent whose evidence does not add up is lying or broken; the caller refuses
the evidence and flags the instance.

One exception is the ``evidence_wanted`` follow-up (docs/agent.md): a complete
drift report with no changes at all. The agent sends it when its live tree
matches its own baseline but the controller said the root differs from the
registered manifest, so there is nothing to hash: the verdict is unverified,
not inconsistent, and the instance is not flagged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.manifest.diff import ChangeKind
from agent.manifest.format import Entry, leaf_hash
from agent.manifest.merkle import RootIndex
from agent.manifest.report import Evidence
from agent.paths import display_path
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
    if not evidence.changes and not evidence.truncated:
        verified = index.roots.root() == reported_root
        return Verdict(verified=verified, truncated=False)
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
            raise _inconsistent(f"path {_shown(change.path)} appears twice in the evidence")
        seen.add(change.path)
        baseline = index.leaves.get(change.path)
        if change.kind == ChangeKind.ADDED and baseline is not None:
            raise _inconsistent(f"{_shown(change.path)} is reported added but the image has it")
        if change.kind != ChangeKind.ADDED and baseline is None:
            raise _inconsistent(
                f"{_shown(change.path)} is reported {change.kind.value} but the image lacks it"
            )
        if baseline is not None:
            remove.append(baseline)
        if change.entry is not None:
            add.append(leaf_hash(change.entry))
    return remove, add


def _shown(path: bytes) -> str:
    """``path`` in its documented display form, at most 200 bytes of it."""
    return display_path(path[:200]) + ("..." if len(path) > 200 else "")


def _inconsistent(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"drift evidence rejected: {message}", reason="evidence_inconsistent"
    )
