"""Verify a tree against its baked manifest: is this still a faithful copy of the image?

The live tree is scanned under the manifest's own baked policy, never a policy
from the command line or the environment: the policy is part of the image's
identity, so the mutable paths and ignored attributes of the bake are exactly
those of the check and a conformant tree never drifts by configuration.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from agent.errors import AgentError
from agent.manifest.diff import Change, ChangeKind, diff
from agent.manifest.format import Manifest, digest_of
from agent.scan.result import Progress
from agent.scan.scanner import scan
from agent.scan.statcache import StatCache


class VerifyError(AgentError):
    """The verification cannot run (the root is missing or not a directory)."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of one verification: the two roots and every change, sorted by path."""

    root: bytes
    expected_root: bytes
    manifest_digest: str
    changes: tuple[Change, ...]
    entry_count: int
    expected_entry_count: int
    files_hashed: int
    bytes_hashed: int
    scan_errors: int
    seconds: float

    @property
    def conformant(self) -> bool:
        """True when the live root equals the baked root (no change at all)."""
        return self.root == self.expected_root

    def counts(self) -> dict[str, int]:
        """How many changes of each kind, and how many entries on each side."""
        kinds = Counter(change.kind for change in self.changes)
        return {
            "added": kinds[ChangeKind.ADDED],
            "removed": kinds[ChangeKind.REMOVED],
            "modified": kinds[ChangeKind.MODIFIED],
            "entries": self.entry_count,
            "expected_entries": self.expected_entry_count,
            "scan_errors": self.scan_errors,
        }


def verify(
    root: str,
    manifest: Manifest,
    *,
    manifest_digest: str | None = None,
    cache: StatCache | None = None,
    full_rehash: bool = False,
    progress: Progress | None = None,
) -> VerifyResult:
    """Scan ``root`` under ``manifest.policy`` and diff it against ``manifest``.

    ``manifest_digest`` defaults to the digest of the manifest's canonical
    encoding. Without a ``cache`` every regular file is hashed. Raises
    VerifyError when ``root`` is not a directory.
    """
    if not os.path.isdir(root):
        raise VerifyError(f"root {root} is not a directory")
    digest = manifest_digest or digest_of(manifest.encode())
    result = scan(root, manifest.policy, cache=cache, full_rehash=full_rehash, progress=progress)
    changes = tuple(diff(manifest.entries, result.entries))
    return VerifyResult(
        root=result.root,
        expected_root=manifest.root,
        manifest_digest=digest,
        changes=changes,
        entry_count=len(result.entries),
        expected_entry_count=len(manifest.entries),
        files_hashed=result.files_hashed,
        bytes_hashed=result.bytes_hashed,
        scan_errors=result.errors,
        seconds=result.seconds,
    )
