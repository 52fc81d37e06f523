"""The live root in watch mode: the baseline with the current changes applied.

After a scan, the agent knows every change against the baked manifest (the
scan's evidence, when it was complete). From then on each path the watch
reports is re-examined and its change replaced: added, modified, removed, or
gone back to the baseline. The live root is the baseline's Merkle root with
those changes applied, so a change costs re-hashing the one or two buckets it
moves (about a hundred leaves each) and never the whole tree, and the drift
evidence is the current set of changes, already at hand. This is the same
arithmetic the controller uses to check evidence against a reported root.

Memory grows with the number of changes, never with the tree (about 500
bytes each). Past ``MAX_TRACKED`` changed paths the live state gives up
(:class:`TooManyChangesError`) and the caller falls back to full scans: such
an instance was tainted long before, and its evidence is truncated anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from agent.daemon.report import bound_evidence
from agent.errors import AgentError
from agent.manifest.baseline import BaselineIndex
from agent.manifest.diff import Change, ChangeKind, changed_attributes
from agent.manifest.format import Entry, leaf_hash
from agent.manifest.merkle import bucket_hash, bucket_of, root_of_buckets
from agent.manifest.report import Evidence

MAX_TRACKED = 20_000


class TooManyChangesError(AgentError):
    """The live state holds more changes than it may; a full scan must take over."""


@dataclass(frozen=True, slots=True)
class _Delta:
    """One path that differs from the baseline: its baseline leaf, its live leaf, the change."""

    baseline_leaf: bytes | None
    leaf: bytes | None
    change: Change
    baseline: Entry | None


class LiveRoot:
    """The baseline's leaves with a set of changed paths swapped, and the root over them."""

    def __init__(self, baseline: BaselineIndex, *, max_tracked: int = MAX_TRACKED) -> None:
        self._baseline = baseline
        self._max_tracked = max_tracked
        self._deltas: dict[bytes, _Delta] = {}
        self._removed: dict[int, set[bytes]] = {}
        """Per bucket: baseline leaves of changed paths (no longer in the live tree)."""
        self._added: dict[int, set[bytes]] = {}
        """Per bucket: live leaves of changed paths."""
        self._hashes = [hashlib.sha256(leaves).digest() for leaves in baseline.bucket_leaves]

    def __len__(self) -> int:
        """How many paths differ from the baseline."""
        return len(self._deltas)

    def root(self) -> bytes:
        return root_of_buckets(self._hashes)

    def evidence(self, *, max_changes: int, max_bytes: int) -> Evidence | None:
        """The changes against the baseline, bounded (None when there are none)."""
        if not self._deltas:
            return None
        changes = [self._deltas[path].change for path in sorted(self._deltas)]
        return bound_evidence(changes, max_changes=max_changes, max_bytes=max_bytes)

    def changed_paths_under(self, directory: bytes) -> list[bytes]:
        """Changed paths strictly below ``directory`` that exist in the live tree."""
        prefix = directory.rstrip(b"/") + b"/"
        return [p for p, d in self._deltas.items() if p.startswith(prefix) and d.leaf is not None]

    def apply(self, changes: Iterable[tuple[bytes, Entry | None]]) -> None:
        """Set each path to its live entry (None: it no longer exists) and update the root.

        Entries must already be as the scanner records them (ignored attributes
        zeroed). Raises TooManyChangesError past ``max_tracked`` changed paths
        (the state is then unusable); ManifestError when the baseline cannot be read.
        """
        touched: set[int] = set()
        for path, entry in changes:
            self._apply_one(path, entry, touched)
            if len(self._deltas) > self._max_tracked:
                raise TooManyChangesError(
                    f"more than {self._max_tracked} paths differ from the image: "
                    "watch mode hands over to full scans"
                )
        for bucket in touched:
            self._rehash(bucket)

    def _apply_one(self, path: bytes, entry: Entry | None, touched: set[int]) -> None:
        old = self._deltas.pop(path, None)
        if old is not None:
            self._move(old.baseline_leaf, old.leaf, touched, undo=True)
            base, base_leaf = old.baseline, old.baseline_leaf
        else:
            found = self._baseline.lookup(path)
            base, base_leaf = (None, None) if found is None else found
        leaf = None if entry is None else leaf_hash(entry)
        if leaf == base_leaf:
            return  # back to (or still) what the image has
        if entry is None:
            change = Change(ChangeKind.REMOVED, path, None)
        elif base is None:
            change = Change(ChangeKind.ADDED, path, entry)
        else:
            change = Change(ChangeKind.MODIFIED, path, entry, changed_attributes(base, entry))
        self._deltas[path] = _Delta(base_leaf, leaf, change, base)
        self._move(base_leaf, leaf, touched, undo=False)

    def _move(
        self, baseline_leaf: bytes | None, leaf: bytes | None, touched: set[int], *, undo: bool
    ) -> None:
        for leaf_value, table in ((baseline_leaf, self._removed), (leaf, self._added)):
            if leaf_value is None:
                continue
            bucket = bucket_of(leaf_value)
            members = table.setdefault(bucket, set())
            if undo:
                members.discard(leaf_value)
            else:
                members.add(leaf_value)
            touched.add(bucket)

    def _rehash(self, bucket: int) -> None:
        packed = self._baseline.bucket_leaves[bucket]
        removed = self._removed.get(bucket, set())
        leaves = {packed[i : i + 32] for i in range(0, len(packed), 32)} - removed
        leaves |= self._added.get(bucket, set())
        self._hashes[bucket] = bucket_hash(leaves)
