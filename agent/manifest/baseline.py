"""The baked manifest as a compact lookup table, for watch mode's incremental root.

Watch mode keeps the live root current by applying each change to the image's
baseline: the root over the baseline's leaves with the changed paths' leaves
swapped (:mod:`agent.daemon.watch.liveroot`). That needs, for any path, the baseline entry
and its leaf, and for any Merkle bucket, the baseline leaves in it. Decoding
the whole manifest into entries would cost over 50 MB of Python objects for
100,000 files, so this index keeps only what a lookup needs:

- the file offset of every entry record (8 bytes per entry), in path order as
  the manifest stores them, so a path is found by binary search, reading the
  record with ``pread`` from the open manifest file;
- every baseline leaf, grouped by bucket (32 bytes per entry).

A leaf is SHA-256 over the entry's canonical bytes, which are exactly the bytes
of its record in the manifest, so no entry is decoded to build the index.
The file stays open: a manifest replaced on disk while the agent runs does not
change what the index reads (a truncated one makes lookups fail loudly).
"""

from __future__ import annotations

import hashlib
import os
from array import array

from agent.errors import ManifestError
from agent.manifest.format import Entry, entry_from_proto
from agent.manifest.merkle import BUCKETS, bucket_of
from protos.corral.v1 import manifest_pb2

_ENTRIES_FIELD = 4
_PROBE = 512  # bytes read to find a record's path; longer paths take a second read


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ManifestError("manifest ends inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ManifestError("manifest varint too long")


def _sorted_leaves(packed: bytearray) -> bytes:
    return b"".join(sorted(bytes(packed[i : i + 32]) for i in range(0, len(packed), 32)))


class BaselineIndex:
    """Where each baseline entry is in ``manifest.pb`` and which leaves each bucket holds."""

    def __init__(self, path: str) -> None:
        """Index the manifest at ``path``. Raises ManifestError when it cannot be read."""
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            with open(self._fd, "rb", closefd=False) as handle:
                data = handle.read()
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
        self.path = path
        self.offsets = array("Q")
        """File offset of each entry's canonical bytes, in path order."""
        self.lengths = array("I")
        buckets = [bytearray() for _ in range(BUCKETS)]
        view = memoryview(data)
        sha256 = hashlib.sha256
        pos = 0
        while pos < len(view):
            key, pos = _varint(view, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(view, pos)
                continue
            if wire != 2:
                raise ManifestError(f"{path}: unexpected wire type {wire}")
            length, pos = _varint(view, pos)
            if field == _ENTRIES_FIELD:
                leaf = sha256(view[pos : pos + length]).digest()
                buckets[bucket_of(leaf)] += leaf
                self.offsets.append(pos)
                self.lengths.append(length)
            pos += length
        if pos != len(view):
            raise ManifestError(f"{path}: truncated record")
        view.release()
        del data
        self.bucket_leaves: list[bytes] = [_sorted_leaves(bucket) for bucket in buckets]
        """The baseline leaves of each bucket, sorted and concatenated (32 bytes each)."""

    def __len__(self) -> int:
        return len(self.offsets)

    def close(self) -> None:
        os.close(self._fd)

    def _read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise ManifestError(f"{self.path} changed on disk while the agent runs")
        return data

    def path_at(self, index: int) -> bytes:
        """The path of entry ``index`` (field 1 comes first in a canonical entry)."""
        offset, length = self.offsets[index], self.lengths[index]
        head = self._read(offset, min(length, _PROBE))
        if head[:1] != b"\x0a":
            raise ManifestError(f"{self.path}: entry {index} does not start with its path")
        size, start = _varint(head, 1)
        if start + size > len(head):
            head = self._read(offset, start + size)
        return head[start : start + size]

    def find(self, path: bytes) -> int:
        """The index of the first entry whose path is >= ``path`` (binary search)."""
        low, high = 0, len(self.offsets)
        while low < high:
            middle = (low + high) // 2
            if self.path_at(middle) < path:
                low = middle + 1
            else:
                high = middle
        return low

    def lookup(self, path: bytes) -> tuple[Entry, bytes] | None:
        """The baseline entry for ``path`` and its leaf, or None when the image lacks it."""
        index = self.find(path)
        if index >= len(self.offsets) or self.path_at(index) != path:
            return None
        return self.entry_at(index)

    def entry_at(self, index: int) -> tuple[Entry, bytes]:
        """Entry ``index`` and its leaf."""
        encoded = self._read(self.offsets[index], self.lengths[index])
        message = manifest_pb2.Entry()
        message.ParseFromString(encoded)
        return entry_from_proto(message), hashlib.sha256(encoded).digest()

    def paths_under(self, directory: bytes) -> list[bytes]:
        """Every baseline path strictly below ``directory`` (they are contiguous)."""
        prefix = directory.rstrip(b"/") + b"/"
        index = self.find(prefix)
        paths: list[bytes] = []
        while index < len(self.offsets):
            path = self.path_at(index)
            if not path.startswith(prefix):
                break
            paths.append(path)
            index += 1
        return paths
