"""What a policy means for one walk: where it starts, what it skips, what it zeroes.

The scanner asks these questions once per scan (or once per directory), so
the answers are computed up front from the :class:`~agent.manifest.policy.Policy`.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.manifest.format import Entry, EntryType
from agent.manifest.policy import Policy


def ignoring(policy: Policy) -> Callable[[Entry], Entry] | None:
    """A function recording the attributes ``policy`` ignores as zero (None: ignores none)."""
    if not policy.ignore_attributes:
        return None
    ignores = policy.ignores
    zero_mode, zero_uid, zero_gid = ignores("mode"), ignores("uid"), ignores("gid")
    zero_size, zero_device = ignores("size"), ignores("device")
    zero_content, zero_target = ignores("content"), ignores("target")

    def strip(entry: Entry) -> Entry:
        path, kind, mode, uid, gid, size, digest, target, major, minor, error = entry
        if zero_content and kind is EntryType.REGULAR:
            digest = b""
        if zero_target and kind is EntryType.SYMLINK:
            digest = target = b""
        if zero_device:
            major = minor = 0
        return Entry(
            path,
            kind,
            0 if zero_mode else mode,
            0 if zero_uid else uid,
            0 if zero_gid else gid,
            0 if zero_size else size,
            digest,
            target,
            major,
            minor,
            error,
        )

    return strip


def leaf_signature(policy: Policy) -> str:
    """What a cached leaf depends on besides the file: the attributes zeroed by the policy."""
    return ",".join(sorted(policy.ignore_attributes))


class Exclusions:
    """Which directories' children need the policy's exclude check at all.

    Matching every path against the exclude patterns costs more than the rest
    of the walk for an unchanged file. When every pattern is a plain path (no
    ``*``, ``?`` or ``[``, as in the default policy), only the children of the
    patterns' ancestor directories can match, and only those are checked.
    """

    def __init__(self, policy: Policy) -> None:
        literal = all(not any(c in p for c in "*?[") for p in policy.exclude)
        self.ancestors: set[bytes] | None = None
        if literal:
            self.ancestors = set()
            for pattern in policy.exclude:
                path = pattern.encode("utf-8", "surrogateescape").rstrip(b"/")
                while path:
                    path = path.rpartition(b"/")[0]
                    self.ancestors.add(path or b"/")

    def may_exclude(self, directory: bytes) -> bool:
        return self.ancestors is None or directory in self.ancestors


def include_roots(policy: Policy) -> list[bytes]:
    """The include paths as bytes, minus excluded ones and those nested in another."""
    paths = {p.encode("utf-8", "surrogateescape").rstrip(b"/") or b"/" for p in policy.include}
    roots: list[bytes] = []
    for rel in sorted(paths):
        nested = any(rel.startswith(outer.rstrip(b"/") + b"/") for outer in roots)
        if not nested and not policy.excludes(rel):
            roots.append(rel)
    return roots
