"""Apply an image's layers, in order, to a tree held in memory: what an unpack would leave.

Each layer's tar is read once, front to back (:mod:`agent.image.oci.tarreader`,
which parses headers as the engines' Go unpacker does): streamed, or walked in
place in its file (:mod:`agent.image.oci.placed`). Regular files' contents are
hashed as :mod:`agent.image.oci.contents` says, never kept, so memory holds one
node of metadata per path. The rules are those of the OCI image spec as an
overlay-backed engine (Podman's containers/storage, Docker's overlay2)
applies them, so the tree is exactly the root that engine mounts:

- ``.wh.NAME`` removes NAME (and everything below it) from the layers beneath;
  ``.wh..wh..opq`` in a directory hides everything the layers beneath put in
  it; other ``.wh..wh.*`` names are aufs bookkeeping and are skipped. A
  character device 0/0 is overlayfs's own whiteout and removes too.
- A directory met again merges: the later layer's mode and owner win, the
  contents stay. Any other object replaces what was there.
- A parent directory a layer does not carry itself (no header for it) is
  created in that layer as ``0755 0:0``, as the engine's unpacker creates it
  in the layer's own directory, where it hides the lower directory's mode and
  owner in the mounted root. A lower non-directory there (a symlink) is
  replaced by that directory.
- A hard link takes its target's attributes and content digest.
- The root directory is ``0555 0:0`` unless a layer has a ``./`` member:
  each layer's directory inherits the mode of the layer below, with owner 0:0
  (containers/storage's default, so Podman and CRI-O). The root's mode is the
  unpacker's choice, not the image's: Docker, containerd and umoci make it
  ``0755``, which ``root_mode`` selects.
- A symlink's mode is ``0777`` (what lstat reports on Linux), whatever the
  header says.

Archives are untrusted: a member name that is absolute or has ``..``, a hard
link whose target is absolute, escapes or does not exist, a member below a
non-directory of the same layer (it would be written through a symlink),
an unknown member type, a path longer than :data:`MAX_PATH`, an extended
header larger than :data:`~agent.image.oci.tarheader.MAX_HEADER`, a malformed
or truncated header, an owner id beyond 32 bits or more than ``max_members``
members all fail the bake with :class:`LayerError`. Symlink targets are data
(nothing is ever written through them), so an absolute target is fine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent.image.oci.contents import Contents, PlacedContents, StreamedContents
from agent.image.oci.placed import PlacedLayer, WalkedMembers, walk
from agent.image.oci.tarheader import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    HARD_LINK,
    REGULAR,
    SYMLINK,
    LayerError,
)
from agent.image.oci.tarreader import Chunks, LayerReader, Member, shown
from agent.image.secrets import SecretWarning, check_file, is_candidate
from agent.manifest.format import Entry, EntryType
from agent.manifest.policy import Policy
from agent.scan.hashpool import HashPool
from agent.scan.rules import Exclusions, ignoring, include_roots
from agent.scan.scanner import default_workers

MAX_PATH = 4096
"""Longest member path accepted, in bytes (Linux's PATH_MAX)."""
MAX_MEMBERS = 5_000_000
"""Default bound on the members of all layers of one image together."""

ROOT = b"/"
ROOT_MODE = 0o555
IMPLIED_MODE = 0o755
_WHITEOUT = b".wh."
_OPAQUE = b".wh..wh..opq"
_AUFS_META = b".wh..wh."
_KIND = {
    DIRECTORY: EntryType.DIRECTORY,
    SYMLINK: EntryType.SYMLINK,
    CHAR_DEVICE: EntryType.CHAR_DEVICE,
    BLOCK_DEVICE: EntryType.BLOCK_DEVICE,
    FIFO: EntryType.FIFO,
}


@dataclass(slots=True)
class _Node:
    kind: EntryType
    mode: int
    uid: int
    gid: int
    size: int = 0
    digest: bytes = b""
    target: bytes = b""
    major: int = 0
    minor: int = 0
    layer: int = -1


def member_path(name: bytes) -> bytes:
    """A member's name as an absolute path inside the image (``b"/"`` for the root).

    Raises LayerError for an absolute name, a ``..`` component or an overlong path.
    """
    if name.startswith((b".", b"/")) or b"/." in name or b"//" in name:
        if name.startswith(b"/"):
            raise LayerError(f"unsafe member name {shown(name)}: absolute path")
        parts = [part for part in name.split(b"/") if part not in (b"", b".")]
        if b".." in parts:
            raise LayerError(f"unsafe member name {shown(name)}: '..' component")
        path = b"/" + b"/".join(parts)
    else:  # the usual "usr/lib/x" or "usr/lib/": no empty, "." or ".." component
        path = b"/" + (name[:-1] if name.endswith(b"/") else name)
    if len(path) > MAX_PATH:
        raise LayerError(f"member name of {len(path)} bytes (more than {MAX_PATH})")
    return path


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or ROOT


class ImageTree:
    """The image's filesystem as layers are applied: one metadata node per path.

    Close it (or use it as a context manager) to stop the walker and hashing
    processes a placed layer starts.
    """

    def __init__(
        self,
        *,
        root_mode: int = ROOT_MODE,
        max_members: int = MAX_MEMBERS,
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
    ) -> None:
        self._nodes: dict[bytes, _Node] = {ROOT: _Node(EntryType.DIRECTORY, root_mode, 0, 0)}
        self._children: dict[bytes, set[bytes]] = {ROOT: set()}
        self._warnings: dict[bytes, SecretWarning] = {}
        self._layer = -1
        self._max_members = max_members
        self._progress = progress
        self._pool = HashPool(default_workers() if workers is None else workers)
        self._walker = HashPool(1, work=walk)
        self.members = 0
        self.files_hashed = 0
        self.bytes_hashed = 0

    def __enter__(self) -> ImageTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the walker and hashing processes, if any were started."""
        self._walker.close()
        self._pool.close()

    # -- applying ---------------------------------------------------------------

    def apply(self, stream: Chunks | PlacedLayer, label: str) -> None:
        """Apply one uncompressed layer tar (``label`` names it in errors).

        ``stream`` is read front to back, or, for a :class:`PlacedLayer`,
        walked in place with its files hashed by the workers.
        """
        self._layer += 1
        root = self._nodes[ROOT]
        root.uid = root.gid = 0  # this layer's own directory (mode inherited from below)
        root.layer = self._layer
        members: Iterable[Member]
        if isinstance(stream, PlacedLayer):
            members = WalkedMembers(stream, self._walker)
            self._contents: Contents = PlacedContents(stream, members, self._pool)
        else:
            members = reader = LayerReader(stream)
            self._contents = StreamedContents(reader)
        try:
            try:
                for member in members:
                    self._member(member)
                self._contents.finish()
            finally:
                self._contents.close()
        except LayerError as exc:
            raise LayerError(f"{label}: {exc}") from None

    def _member(self, member: Member) -> None:
        self.members += 1
        if self.members > self._max_members:
            raise LayerError(f"more than {self._max_members} members: not a sane image")
        if self._progress is not None and self.members % 1000 == 0:
            self._progress(self.members, self.bytes_hashed)
        path = member_path(member.name)
        parent, _, base = path.rpartition(b"/")
        parent = parent or ROOT
        if base.startswith(_WHITEOUT):
            if path == ROOT:
                return
            self._ensure_directory(parent, member.name)
            if base == _OPAQUE:
                self._make_opaque(parent)
            elif not base.startswith(_AUFS_META):
                self._whiteout(path[: -len(base)] + base[len(_WHITEOUT) :])
            return
        if path == ROOT:
            if member.kind != DIRECTORY:
                raise LayerError(
                    f"member {shown(member.name)} names the root but is not a directory"
                )
            root = self._nodes[ROOT]
            root.mode, root.uid, root.gid = member.mode & 0o7777, member.uid, member.gid
            return
        self._ensure_directory(parent, member.name)
        node: _Node | None
        if member.kind == REGULAR:  # most members: the short way
            node = _Node(EntryType.REGULAR, member.mode & 0o7777, member.uid, member.gid,
                         member.size, layer=self._layer)  # fmt: skip
            self._add_file(path, base, node)
        else:
            node = self._other_node(member, path)
            if node is None:  # an overlay whiteout device
                self._whiteout(path)
                return
        self._put(path, node, parent)

    def _other_node(self, member: Member, path: bytes) -> _Node | None:
        """The node for a member that is not a regular file; None for an overlay whiteout."""
        layer = self._layer
        kind = member.kind
        mode = member.mode & 0o7777
        if kind == HARD_LINK:
            return self._hard_link(member, path)
        if kind == SYMLINK:
            target = member.link
            digest = hashlib.sha256(target).digest()
            return _Node(
                EntryType.SYMLINK, 0o777, member.uid, member.gid, 0, digest, target, layer=layer
            )
        if kind == CHAR_DEVICE and member.major == 0 and member.minor == 0:
            return None
        return _Node(_KIND[kind], mode, member.uid, member.gid, major=member.major,
                     minor=member.minor, layer=layer)  # fmt: skip

    def _hard_link(self, member: Member, path: bytes) -> _Node:
        link = member.link
        if link.startswith(b"/"):
            raise LayerError(f"hard link {shown(member.name)} -> {shown(link)} leaves the root")
        try:
            target_path = member_path(link)
        except LayerError as exc:
            raise LayerError(f"hard link {shown(member.name)} leaves the root ({exc})") from None
        target = self._nodes.get(target_path)
        if target is None or target.kind is EntryType.DIRECTORY:
            raise LayerError(
                f"hard link {shown(member.name)} -> {shown(link)}: no such file in the image"
            )
        if target_path in self._warnings:
            self._warnings[path] = dataclasses.replace(self._warnings[target_path], path=path)
        node = dataclasses.replace(target, layer=self._layer)
        self._contents.link(target, node)
        return node

    def _add_file(self, path: bytes, name: bytes, node: _Node) -> None:
        """Have the file's digest set (now, or when it lands) and look for secrets in it."""
        candidate = is_candidate(name)
        head = self._contents.add(node, peek=candidate)
        self.files_hashed += 1
        self.bytes_hashed += node.size
        if self._warnings:
            self._warnings.pop(path, None)
        if candidate:
            warning = check_file(path, lambda: head)
            if warning is not None:
                self._warnings[path] = warning

    # -- the tree -------------------------------------------------------------------

    def _ensure_directory(self, directory: bytes, name: bytes) -> None:
        """Make ``directory`` a directory of this layer, creating implied ones (0755 0:0)."""
        layer = self._layer
        node = self._nodes.get(directory)
        if node is not None and node.layer == layer and node.kind is EntryType.DIRECTORY:
            return  # nearly always
        chain: list[bytes] = []
        current = directory
        while True:
            node = self._nodes.get(current)
            if node is not None and node.layer == layer:
                if node.kind is not EntryType.DIRECTORY:
                    raise LayerError(
                        f"member {shown(name)} lies below {current.decode(errors='replace')!r}, "
                        "which this layer made a non-directory (it would be written through it)"
                    )
                break
            chain.append(current)
            current = _parent(current)
        for path in reversed(chain):
            node = self._nodes.get(path)
            if node is not None and node.kind is EntryType.DIRECTORY:
                node.mode, node.uid, node.gid, node.layer = IMPLIED_MODE, 0, 0, layer
                continue
            self._put(path, _Node(EntryType.DIRECTORY, IMPLIED_MODE, 0, 0, layer=layer))

    def _put(self, path: bytes, node: _Node, parent: bytes | None = None) -> None:
        """Put ``node`` at ``path`` (whose parent directory exists; ``parent`` if known)."""
        existing = self._nodes.get(path)
        if existing is not None:
            if existing.kind is EntryType.DIRECTORY and node.kind is EntryType.DIRECTORY:
                existing.mode, existing.uid, existing.gid = node.mode, node.uid, node.gid
                existing.layer = node.layer
                return
            self._remove(path)
        self._nodes[path] = node
        self._children[parent or _parent(path)].add(path)
        if node.kind is EntryType.DIRECTORY:
            self._children[path] = set()
        elif node.kind is not EntryType.REGULAR and self._warnings:
            self._warnings.pop(path, None)

    def _remove(self, path: bytes) -> None:
        """Remove ``path`` and everything below it."""
        self._children[_parent(path)].discard(path)
        stack = [path]
        while stack:
            current = stack.pop()
            self._nodes.pop(current, None)
            self._warnings.pop(current, None)
            below = self._children.pop(current, None)
            if below:
                stack.extend(below)

    def _whiteout(self, path: bytes) -> None:
        node = self._nodes.get(path)
        if node is not None and node.layer != self._layer:  # hides lower layers only
            self._remove(path)

    def _make_opaque(self, directory: bytes) -> None:
        """Hide what lower layers put below ``directory`` (this layer's own entries stay)."""
        layer = self._layer
        stack = [directory]
        while stack:
            current = stack.pop()
            for child in list(self._children.get(current, ())):
                if self._nodes[child].layer != layer:
                    self._remove(child)
                elif self._nodes[child].kind is EntryType.DIRECTORY:
                    stack.append(child)

    # -- the result -----------------------------------------------------------------

    def paths(self) -> Iterator[bytes]:
        return iter(self._nodes)

    def entries(self, policy: Policy) -> list[Entry]:
        """The entries a scan of the unpacked root under ``policy`` records, sorted by path."""
        exclusions = Exclusions(policy)
        nodes, children = self._nodes, self._children
        paths: list[bytes] = []
        for start in include_roots(policy):
            if start not in nodes:
                continue
            paths.append(start)
            stack = [start] if start in children else []
            while stack:
                directory = stack.pop()
                below: Iterable[bytes] = children[directory]
                if exclusions.may_exclude(directory):
                    below = [child for child in below if not policy.excludes(child)]
                paths.extend(below)
                stack.extend(child for child in below if child in children)
        paths.sort()  # bytes sort faster than entries by key
        out = [_entry(path, nodes[path]) for path in paths]
        strip = ignoring(policy)
        return out if strip is None else [strip(entry) for entry in out]

    def warnings(self, entries: list[Entry]) -> list[SecretWarning]:
        """Secret warnings for the regular files among ``entries``, by path."""
        found = [self._warnings[e.path] for e in entries if e.path in self._warnings]
        return sorted(found, key=lambda warning: warning.path)


def _entry(path: bytes, node: _Node) -> Entry:
    return Entry(
        path,
        node.kind,
        node.mode,
        node.uid,
        node.gid,
        node.size,
        node.digest,
        node.target,
        node.major,
        node.minor,
    )
