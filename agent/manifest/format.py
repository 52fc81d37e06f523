"""The manifest: the canonical record of what an image contains, its digest and its root.

Entries are sorted by path bytes and encoded as the ``corral.v1.Manifest``
protobuf message, so baking the same tree twice gives the same bytes. Two hashes
identify a manifest:

- the **digest** (``sha256:<hex>`` of the encoded file), which names the file;
- the **root**, a two-level Merkle hash over the entries (see :mod:`agent.manifest.merkle`)
  that the agent recomputes after each scan and sends in its constant-size report.

The root covers entries only; the digest also covers the policy.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from google.protobuf.message import DecodeError

from agent.errors import ManifestError, PolicyError
from agent.manifest.merkle import compute_root
from agent.manifest.policy import Policy
from protos.corral.v1 import manifest_pb2

FORMAT_VERSION = 1


class EntryType(IntEnum):
    """Kinds of filesystem objects (values match ``corral.v1.EntryType``)."""

    REGULAR = 1
    DIRECTORY = 2
    SYMLINK = 3
    CHAR_DEVICE = 4
    BLOCK_DEVICE = 5
    FIFO = 6
    SOCKET = 7


class EntryError(IntEnum):
    """Why an entry is incomplete (values match ``corral.v1.EntryError``)."""

    NONE = 0
    VANISHED = 1
    UNREADABLE = 2


class Entry(NamedTuple):
    """One filesystem object under a checked path. Immutable and cheap to build."""

    path: bytes
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int = 0
    sha256: bytes = b""
    link_target: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    error: EntryError = EntryError.NONE


def entry_to_proto(entry: Entry) -> manifest_pb2.Entry:
    """The protobuf form of ``entry``; zero fields stay unset (canonical)."""
    return manifest_pb2.Entry(
        path=entry.path,
        type=int(entry.type),  # type: ignore[arg-type]
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        size=entry.size,
        sha256=entry.sha256,
        link_target=entry.link_target,
        rdev_major=entry.rdev_major,
        rdev_minor=entry.rdev_minor,
        error=int(entry.error),  # type: ignore[arg-type]
    )


def entry_from_proto(message: manifest_pb2.Entry) -> Entry:
    """The domain form of a protobuf entry. Raises ManifestError on unknown enums."""
    try:
        kind = EntryType(message.type)
        error = EntryError(message.error)
    except ValueError as exc:
        raise ManifestError(f"entry {message.path!r}: {exc}") from exc
    return Entry(
        message.path,
        kind,
        message.mode,
        message.uid,
        message.gid,
        message.size,
        message.sha256,
        message.link_target,
        message.rdev_major,
        message.rdev_minor,
        error,
    )


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TABLE_LIMIT = 1 << 14
_VARINTS = [_varint_bytes(value) for value in range(_TABLE_LIMIT)]  # 1 and 2-byte varints


def _varint(value: int) -> bytes:
    return _VARINTS[value] if value < _TABLE_LIMIT else _varint_bytes(value)


def encode_entry(entry: Entry) -> bytes:
    """The canonical bytes of one entry: the leaf that the root hashes.

    This is exactly ``entry_to_proto(entry).SerializeToString(deterministic=True)``
    (fields in number order, zero values omitted), written by hand because a
    bake encodes every entry of the image and building a protobuf message per
    entry costs more than the encoding itself. tests/unit/test_manifest_codec.py
    holds the two to the same bytes.
    """
    path, kind, mode, uid, gid, size, digest, target, major, minor, error = entry
    out = b"\x0a" + _varint(len(path)) + path
    if kind:
        out += b"\x10" + _varint(kind)
    if mode:
        out += b"\x18" + _varint(mode)
    if uid:
        out += b"\x20" + _varint(uid)
    if gid:
        out += b"\x28" + _varint(gid)
    if size:
        out += b"\x30" + _varint(size)
    if digest:
        out += b"\x3a" + _varint(len(digest)) + digest
    if target:
        out += b"\x42" + _varint(len(target)) + target
    if major:
        out += b"\x48" + _varint(major)
    if minor:
        out += b"\x50" + _varint(minor)
    if error:
        out += b"\x58" + _varint(error)
    return out


_path_of = operator.itemgetter(0)  # Entry.path, as a C-level sort key
_ENTRIES_FIELD = b"\x22"  # Manifest.entries: field 4, length-delimited


def leaf_hash(entry: Entry) -> bytes:
    """SHA-256 of the entry's canonical bytes."""
    return hashlib.sha256(encode_entry(entry)).digest()


def root_of(entries: Iterable[Entry]) -> bytes:
    """The Merkle root over ``entries`` (order does not matter)."""
    return compute_root(map(leaf_hash, entries))


@dataclass(frozen=True)
class Manifest:
    """A baked manifest: its policy and every entry, sorted by path."""

    policy: Policy
    entries: Sequence[Entry]
    root: bytes
    _body: bytearray | None = field(default=None, repr=False, compare=False)
    """The entries as encoded inside the manifest message (field 4), kept by :meth:`build`."""

    @classmethod
    def build(cls, policy: Policy, entries: Iterable[Entry]) -> Manifest:
        """Sort ``entries`` and compute the root.

        Each entry is encoded once, here: its leaf hash feeds the root and its
        bytes are kept for :meth:`encode`.
        """
        ordered = sorted(entries, key=_path_of)
        body = bytearray()
        sha256 = hashlib.sha256

        def leaves() -> Iterator[bytes]:
            for entry in ordered:
                encoded = encode_entry(entry)
                body.extend(_ENTRIES_FIELD + _varint(len(encoded)) + encoded)
                yield sha256(encoded).digest()

        root = compute_root(leaves())
        return cls(policy=policy, entries=ordered, root=root, _body=body)

    def encode(self) -> bytes:
        """The canonical encoding written to ``manifest.pb``.

        The header fields (1-3) come from protobuf itself; the entries (field 4,
        written last in field order) are appended as length-delimited records,
        which is byte for byte what the protobuf serializer writes.
        """
        header = manifest_pb2.Manifest(
            format_version=FORMAT_VERSION, policy=self.policy.to_proto(), root=self.root
        ).SerializeToString(deterministic=True)
        body = self._body
        if body is None:
            body = bytearray()
            for entry in self.entries:
                encoded = encode_entry(entry)
                body.extend(_ENTRIES_FIELD + _varint(len(encoded)) + encoded)
        return header + body

    @property
    def byte_count(self) -> int:
        """Total size of the regular files the manifest records."""
        return sum(entry.size for entry in self.entries)


def digest_of(encoded: bytes) -> str:
    """The manifest digest, ``sha256:<64 hex>``, of an encoded manifest."""
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def decode(encoded: bytes) -> Manifest:
    """Parse and validate an encoded manifest.

    Raises ManifestError when the bytes are not a manifest, the format version is
    unknown, entries are unsorted or duplicated, or the stored root does not
    match the entries (a corrupt or hand-edited file).
    """
    if not encoded:
        raise ManifestError("not a corral manifest: the file is empty")
    message = manifest_pb2.Manifest()
    try:
        message.ParseFromString(encoded)
    except DecodeError as exc:
        raise ManifestError(f"not a corral manifest: {exc}") from exc
    if message.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"manifest format version {message.format_version} is not supported "
            f"(this corral reads version {FORMAT_VERSION})"
        )
    entries = [entry_from_proto(item) for item in message.entries]
    for entry in entries:
        if not entry.path.startswith(b"/"):
            raise ManifestError(f"entry path {entry.path!r} is not absolute")
    for before, after in itertools.pairwise(entries):
        if before.path >= after.path:
            raise ManifestError(f"entries are not sorted and unique at {after.path!r}")
    try:
        policy = Policy.from_proto(message.policy)
    except PolicyError as exc:
        raise ManifestError(f"manifest policy is invalid: {exc}") from exc
    root = root_of(entries)
    if root != message.root:
        raise ManifestError("manifest root does not match its entries: the file is corrupt")
    return Manifest(policy=policy, entries=entries, root=root)


def read_manifest(path: str) -> tuple[Manifest, str]:
    """Read ``manifest.pb``; returns the manifest and its digest."""
    try:
        with open(path, "rb") as handle:
            encoded = handle.read()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
    try:
        manifest = decode(encoded)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    return manifest, digest_of(encoded)
