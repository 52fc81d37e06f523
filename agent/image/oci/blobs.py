"""Where an image's blobs are read from: a layout directory, or a tar read in place.

A layout's blobs are files; an archive's are members of a plain tar, read through
a buffered slice of the file (no extraction, no seeks between small reads).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from typing import IO, Protocol, cast

from agent.errors import AgentError

_CHUNK = 1 << 20


class SourceError(AgentError):
    """The image source cannot be read: missing, malformed, or failing its digests."""


@dataclass(frozen=True)
class Region:
    """Where a blob's bytes lie: ``size`` bytes of the file at ``path`` from ``offset``."""

    path: str
    offset: int
    size: int


class Blobs(Protocol):
    def open(self, path: str) -> IO[bytes]: ...

    def exists(self, path: str) -> bool: ...

    def region(self, path: str) -> Region: ...


class DirectoryBlobs:
    def __init__(self, root: str) -> None:
        self._root = root

    def open(self, path: str) -> IO[bytes]:
        try:
            return open(os.path.join(self._root, path), "rb")
        except OSError as exc:
            raise SourceError(f"cannot read {path} in {self._root}: {exc.strerror}") from exc

    def exists(self, path: str) -> bool:
        return os.path.isfile(os.path.join(self._root, path))

    def region(self, path: str) -> Region:
        full = os.path.join(self._root, path)
        try:
            return Region(full, 0, os.stat(full).st_size)
        except OSError as exc:
            raise SourceError(f"cannot read {path} in {self._root}: {exc.strerror}") from exc


class _Slice(io.RawIOBase):
    """``size`` bytes of a file from ``offset``, read through a buffer of its own.

    Reading a blob through :meth:`tarfile.TarFile.extractfile` seeks the shared
    file object before every read, which throws its buffer away: 100,000
    small reads of a layer become 100,000 seeks and unbuffered reads.
    """

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb", buffering=_CHUNK)  # noqa: SIM115 - closed in close()
        self._file.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(wanted)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


class ArchiveBlobs:
    """Regular members of a plain (seekable) tar, read in place."""

    def __init__(self, archive: tarfile.TarFile, path: str, label: str) -> None:
        self._path = path
        self._label = label
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in archive.getmembers():
            name = os.path.normpath(member.name).lstrip("/")
            self._members[name] = member

    def _member(self, path: str) -> tarfile.TarInfo:
        name = os.path.normpath(path)
        for _ in range(8):  # a docker archive's layer.tar may link to the blob
            member = self._members.get(name)
            if member is None:
                break
            if member.issym():
                name = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
            elif member.islnk():
                name = os.path.normpath(member.linkname)
            elif member.isreg() and not member.issparse():
                return member
            else:
                raise SourceError(f"{self._label}: {path} is not a file")
        raise SourceError(f"{self._label} has no {path}")

    def region(self, path: str) -> Region:
        member = self._member(path)
        return Region(self._path, member.offset_data, member.size)

    def open(self, path: str) -> IO[bytes]:
        member = self._member(path)
        try:
            return cast(IO[bytes], _Slice(self._path, member.offset_data, member.size))
        except OSError as exc:
            raise SourceError(f"{self._label}: cannot read {path}: {exc.strerror}") from exc

    def exists(self, path: str) -> bool:
        return os.path.normpath(path) in self._members
