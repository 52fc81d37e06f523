"""Read an overlay upper directory: which paths a container changed, removed or made opaque.

A container on overlayfs sees its image's layers read-only below one writable
upper directory; everything its processes create, modify, chmod, rename or
delete lands there, and nothing else does. So the upper directory alone says
which paths can differ from the image:

- an object present in it is created or modified (a directory appears there
  too when only something below it changed, copied up with its attributes);
- a character device 0/0 is overlayfs's whiteout: that path, and everything
  below it, is removed (``.wh.NAME`` files, the OCI form some drivers keep,
  count the same);
- a directory with the ``trusted.overlay.opaque`` (or, for unprivileged
  mounts, ``user.overlay.opaque``) attribute ``y``, or holding
  ``.wh..wh..opq``, is opaque: nothing of the lower layers below it shows;
- a directory with an overlay ``redirect`` attribute was renamed with
  ``redirect_dir``: its lower contents moved, which the upper directory does
  not list, so the caller must check the merged root instead.

Paths the policy excludes are skipped and not entered. The walk is
proportional to the size of the upper directory, not of the image.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from agent.manifest.policy import Policy
from agent.scan.rules import include_roots

_WHITEOUT = b".wh."
_OPAQUE_MARKER = b".wh..wh..opq"
_AUFS_META = b".wh..wh."
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
_NO_ATTRIBUTE = (errno.ENODATA, errno.ENOTSUP, errno.EPERM)


@dataclass
class UpperChanges:
    """What one read of the upper directory found (paths absolute inside the root)."""

    present: list[bytes] = field(default_factory=list)
    """Paths that exist in the upper directory: created, modified or copied up."""
    removed: list[bytes] = field(default_factory=list)
    """Whiteouts: these paths and everything below them are gone."""
    opaque: list[bytes] = field(default_factory=list)
    """Directories that hide everything lower layers have below them."""
    redirected: list[bytes] = field(default_factory=list)
    """Directories renamed with overlay's redirect_dir: the upper directory cannot tell."""


def _has_attribute(path: bytes, names: tuple[str, ...], value: bytes | None) -> bool:
    for name in names:
        try:
            found = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_ATTRIBUTE:
                continue
            raise
        if value is None or found == value:
            return True
    return False


class _Scope:
    """Whether a path is checked under the policy, and whether to enter a directory."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._roots = include_roots(policy)

    def checked(self, path: bytes) -> bool:
        inside = any(root in (b"/", path) or path.startswith(root + b"/") for root in self._roots)
        return inside and not self._policy.excludes(path)

    def enter(self, path: bytes) -> bool:
        """A directory is entered when checked, or when an include root lies below it."""
        if self.checked(path):
            return True
        prefix = path.rstrip(b"/") + b"/"
        return any(root.startswith(prefix) for root in self._roots)


def read_upper(upper_dir: str | bytes, policy: Policy) -> UpperChanges:
    """Walk ``upper_dir`` and classify what it holds. Raises OSError if it cannot be read."""
    base = os.fsencode(upper_dir).rstrip(b"/")
    scope = _Scope(policy)
    changes = UpperChanges()
    if scope.checked(b"/"):
        changes.present.append(b"/")
    stack = [b"/"]
    while stack:
        directory = stack.pop()
        prefix = directory if directory == b"/" else directory + b"/"
        with os.scandir(base + directory if directory != b"/" else base) as listing:
            for child in listing:
                name = child.name
                path = prefix + name
                if name.startswith(_WHITEOUT):
                    if name == _OPAQUE_MARKER:
                        if scope.checked(directory):
                            changes.opaque.append(directory)
                    elif not name.startswith(_AUFS_META):
                        removed = prefix + name[len(_WHITEOUT) :]
                        if scope.checked(removed):
                            changes.removed.append(removed)
                    continue
                if child.is_dir(follow_symlinks=False):
                    if not scope.enter(path):
                        continue
                    full = base + path
                    if scope.checked(path):
                        changes.present.append(path)
                        if _has_attribute(full, _OPAQUE_XATTRS, b"y"):
                            changes.opaque.append(path)
                        if _has_attribute(full, _REDIRECT_XATTRS, None):
                            changes.redirected.append(path)
                    stack.append(path)
                    continue
                if not scope.checked(path):
                    continue
                if not child.is_file(follow_symlinks=False) and not child.is_symlink():
                    st = child.stat(follow_symlinks=False)
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        changes.removed.append(path)
                        continue
                changes.present.append(path)
    return changes
