"""A layer stored uncompressed in a file, walked where it lies: headers read, contents not.

``podman save --uncompressed`` and an uncompressed OCI layout keep each layer
as a plain tar inside a file. Such a layer need not stream through the baking
process, and nothing of it is read there but what the tree needs:

- a walker process reads the tar's headers (skipping over contents) and hands
  the members over in batches (:class:`WalkedMembers`), a batch ahead of the
  tree that applies them;
- forked workers hash each regular file's content from the file at its
  offsets (:func:`agent.scan.hashing.hash_ranges`), as the mounted-root bake
  hashes files (:class:`agent.image.oci.contents.PlacedContents`);
- one more worker takes the blob's own digest, front to back.

So every core works and the baking process parses nothing.

The streaming path hashes the very bytes it walks; here the walker, the
workers and the blob digest each read the file, so the file must not change
while they do. Its identity (device, inode, size, modification and change
times) is taken when the layer is opened and compared once everything has
been read, and the walker and each worker check device and inode when they
open the file: a file changed or replaced meanwhile fails the bake
(:class:`SourceError`), as a blob that does not match its digest does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.image.oci.blobs import Region, SourceError
from agent.image.oci.tarheader import REGULAR, Header, LayerError
from agent.image.oci.tarreader import LayerReader, Member
from agent.scan.hashing import SEEN_FLAGS, RangeBatch, Ranges, open_seen
from agent.scan.hashpool import Finished, HashPool, WorkerError

READ_SIZE = 16 << 10
"""Bytes the walker reads at a time: a header and, for small files, the next headers too."""
WALK_BATCH = 2000
"""Members the walker hands over at a time."""

WalkJob = tuple[bytes, int, int, int, int]
"""For the walker: the file's path, device and inode; where to start, where the layer ends."""
Record = tuple[bytes, bytes, int, int, int, int, bytes, int, int, Ranges | None]
"""A member as the walker hands it over: its :class:`Header` fields, then a regular
file's ranges (None for other kinds)."""
Walked = tuple[list[Record], int, str]
"""The walker's answer: members, where the next batch starts (-1: the end), and an error
("": none; it follows the members before it)."""

_CHANGED = "\0changed"


@dataclass(frozen=True)
class Identity:
    """What tells a file changed or was replaced: it is the same file, untouched, if equal."""

    device: int
    inode: int
    size: int
    modified_ns: int
    changed_ns: int

    @classmethod
    def of(cls, fd: int) -> Identity:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PlacedLayer:
    """An uncompressed layer blob at ``region`` of a file: where its parts lie, its digest.

    :meth:`walk` and :meth:`batch` make the walker's and the workers' jobs;
    :attr:`digest` is final once :meth:`finish` has returned. Use as a
    context manager: it holds a file descriptor and the blob's digest worker.
    """

    def __init__(self, region: Region, label: str) -> None:
        self.region = region
        self._label = label
        self.digest = ""
        try:
            self._fd = os.open(region.path, SEEN_FLAGS)
        except OSError as exc:
            raise SourceError(f"{label}: cannot read {region.path}: {exc.strerror}") from exc
        self._identity = Identity.of(self._fd)
        self._seen = (os.fsencode(region.path), self._identity.device, self._identity.inode)
        """Where the walker and the workers find this file, and how they know it."""
        if region.offset + region.size > self._identity.size:
            os.close(self._fd)
            raise SourceError(f"{label}: {region.path} ends inside the layer")
        self._blob_worker = HashPool(1)
        whole = self.batch([[(region.offset, region.size)]])
        try:
            self.run(lambda: self._blob_worker.submit(None, whole))
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> PlacedLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._blob_worker.close()
        os.close(self._fd)

    def walk(self, start: int) -> WalkJob:
        """The walker's job for the members from ``start`` (an offset in the file)."""
        return (*self._seen, start, self.region.offset + self.region.size)

    def batch(self, files: list[Ranges]) -> RangeBatch:
        """A workers' batch for files stored as ``files`` in this layer's file."""
        return (*self._seen, files)

    def head(self, ranges: Ranges, limit: int) -> bytes:
        """The first ``limit`` bytes of a file stored as ``ranges``."""
        parts = []
        for offset, length in ranges:
            take = min(length, limit)
            parts.append(bytes(take) if offset < 0 else os.pread(self._fd, take, offset))
            limit -= take
            if not limit:
                break
        return b"".join(parts)

    def changed(self) -> SourceError:
        """The error for a file that is not what it was when the layer was opened."""
        return SourceError(f"{self._label}: {self.region.path} changed while it was read")

    def run(self, call: Callable[[], Finished]) -> Finished:
        """``call`` a pool of this layer's; SourceError if one of its processes died."""
        try:
            return call()
        except WorkerError as exc:
            raise SourceError(f"{self._label}: {exc}") from exc

    def finish(self) -> None:
        """Wait for the blob's digest; SourceError if the file changed meanwhile."""
        ((_, (outcome,)),) = self.run(self._blob_worker.drain)
        if not isinstance(outcome, bytes) or Identity.of(self._fd) != self._identity:
            raise self.changed()
        self.digest = "sha256:" + outcome.hex()


class WalkedMembers:
    """The members of a placed layer, read by a walker process a batch ahead.

    Iterate once, as a :class:`LayerReader`; :meth:`ranges` says where the
    current regular file's content lies. A LayerError the walker met is raised
    after the members before it.
    """

    def __init__(self, layer: PlacedLayer, walker: HashPool) -> None:
        self._layer = layer
        self._walker = walker
        self._ranges: Ranges = []

    def __iter__(self) -> Iterator[Member]:
        layer = self._layer
        self._ask(layer.region.offset)
        pending = True
        try:
            while pending:
                ((_, (records, following, error)),) = layer.run(self._walker.drain)
                pending = following >= 0
                if pending:  # the walker reads on while these are applied
                    self._ask(following)
                for record in records:
                    self._ranges = record[9] or []
                    yield Header._make(record[:9])
                if error == _CHANGED:
                    raise layer.changed()
                if error:
                    raise LayerError(error)
        finally:
            if pending:  # abandoned with a batch still out: it must not answer a later walk
                self._walker.close()

    def _ask(self, start: int) -> None:
        job = self._layer.walk(start)
        self._layer.run(lambda: self._walker.submit(None, job))

    def ranges(self) -> Ranges:
        return self._ranges


class _FileStream:
    """The bytes of an open file from ``start`` to ``end``, read or stepped over."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd, self._position, self._end = fd, start, end

    def read(self, size: int, /) -> bytes:
        count = min(size, self._end - self._position)
        if count <= 0:
            return b""
        data = os.pread(self._fd, count, self._position)
        self._position += len(data)
        return data

    def skip(self, count: int) -> bool:
        if self._position + count > self._end:
            return False
        self._position += count
        return True


def walk(job: WalkJob) -> Walked:
    """In the walker process: up to :data:`WALK_BATCH` members from ``start``, and where next."""
    path, device, inode, start, end = job
    records: list[Record] = []
    try:
        seen = open_seen(path, device, inode)
    except OSError:
        seen = None
    if seen is None:
        return records, -1, _CHANGED
    fd, _ = seen
    try:
        stream = _FileStream(fd, start, end)
        reader = LayerReader(stream, chunk=READ_SIZE, skip=stream.skip, origin=start)
        for member in reader:
            ranges = reader.ranges() if member.kind == REGULAR else None
            records.append((*member, ranges))
            if len(records) == WALK_BATCH:
                return records, reader.following(), ""
        return records, -1, ""
    except LayerError as exc:
        return records, -1, str(exc)
    except OSError as exc:
        return records, -1, f"cannot read the layer: {exc}"
    finally:
        os.close(fd)
