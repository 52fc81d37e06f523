"""A layer stored uncompressed in a file, walked where it lies: headers read, contents not.

``podman save --uncompressed`` and an uncompressed OCI layout keep each layer
as a plain tar inside a file. Such a layer need not stream through the baking
process: its walk reads only the tar headers (skipping over contents), each
regular file's content is hashed by forked workers reading the file at its
offsets (:func:`agent.scan.hashing.hash_ranges`, as the mounted-root bake
hashes files), and the blob's own digest is taken by one more worker reading
it front to back, beside the walk. No byte of content passes through the
walking process, and every core hashes.

The streaming path hashes the very bytes it walks; here the walk, the workers
and the blob digest each read the file, so the file must not change while
they do. Its identity (device, inode, size, modification and change times)
is taken when the layer is opened and compared once everything has been read,
and each worker checks device and inode when it opens the file: a file
changed or replaced meanwhile fails the bake (:class:`SourceError`), as a blob
that does not match its digest does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.image.oci.blobs import Region, SourceError
from agent.image.oci.tarreader import LayerReader
from agent.scan.hashing import RangeBatch, Ranges
from agent.scan.hashpool import HashPool, WorkerError

READ_SIZE = 16 << 10
"""Bytes the walk reads at a time: a header and, for small files, the next headers too."""


@dataclass(frozen=True)
class Identity:
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
    """An uncompressed layer blob at ``region`` of a file: the tar to walk, the blob's digest.

    Reading (:meth:`read`, :meth:`skip`) serves the walk; :meth:`batch` names
    files' content for the workers; :attr:`digest` is final once
    :meth:`finish` has returned. Use as a context manager: it holds a file
    descriptor and the blob's digest worker.
    """

    def __init__(self, region: Region, label: str) -> None:
        self.region = region
        self._label = label
        self._position = 0
        self.digest = ""
        try:
            self._fd = os.open(region.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"{label}: cannot read {region.path}: {exc.strerror}") from exc
        self._identity = Identity.of(self._fd)
        if region.offset + region.size > self._identity.size:
            os.close(self._fd)
            raise SourceError(f"{label}: {region.path} ends inside the layer")
        self._blob_worker = HashPool(1)
        self._blob_worker.submit(None, self.batch([[(region.offset, region.size)]]))

    def __enter__(self) -> PlacedLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._blob_worker.close()
        os.close(self._fd)

    # -- the walk -----------------------------------------------------------------

    def reader(self) -> LayerReader:
        """A reader of the layer's tar that skips contents instead of reading them."""
        return LayerReader(self, chunk=READ_SIZE, skip=self.skip, origin=self.region.offset)

    def read(self, size: int, /) -> bytes:
        count = min(size, self.region.size - self._position)
        if count <= 0:
            return b""
        data = os.pread(self._fd, count, self.region.offset + self._position)
        self._position += len(data)
        return data

    def skip(self, count: int) -> bool:
        """Step over ``count`` bytes; False if the layer ends first."""
        if self._position + count > self.region.size:
            return False
        self._position += count
        return True

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

    # -- the contents --------------------------------------------------------------

    def batch(self, files: list[Ranges]) -> RangeBatch:
        """A workers' batch for files stored as ``files`` in this layer's file."""
        identity = self._identity
        return (os.fsencode(self.region.path), identity.device, identity.inode, files)

    def changed(self) -> SourceError:
        """The error for content a worker could not read as it was when opened."""
        return SourceError(f"{self._label}: {self.region.path} changed while it was read")

    def finish(self) -> None:
        """Wait for the blob's digest; SourceError if the file changed meanwhile."""
        try:
            ((_, (outcome,)),) = self._blob_worker.drain()
        except WorkerError as exc:
            raise SourceError(f"{self._label}: {exc}") from exc
        if not isinstance(outcome, bytes) or Identity.of(self._fd) != self._identity:
            raise self.changed()
        self.digest = "sha256:" + outcome.hex()
