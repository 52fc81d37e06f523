"""Unpack an image artifact into a fresh directory, safely and exactly.

An instance of the local provider is a directory unpacked from an image's
tarball; it must scan to the image's manifest, so modes (set-id bits included),
owners, symlink targets and device numbers are restored exactly. The tarball is
still treated as untrusted input:

- a member name must be relative, without ``..`` or empty components, and its
  parent must be a directory this unpack created: nothing is ever written
  through a symlink, so a symlink may point anywhere (absolute targets such as
  ``/bin/sh -> busybox`` are normal in a root) without letting a later member
  escape the destination;
- hard links, duplicate members and unknown member types are refused
  (:func:`agent.image.artifact.build_artifact` never writes them);
- device nodes need root (``mknod``); unprivileged, they are refused;
- owners are restored when running as root; otherwise every member must
  already belong to the unpacking user (build with ``--owner UID:GID``),
  because an instance whose owners differ from its manifest would be drift
  from birth.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass

from agent.image.artifact import ArtifactError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnpackResult:
    """What :func:`unpack_artifact` created."""

    dest: str
    members: int
    bytes_written: int


def _relative(name: str) -> bytes:
    """The member's path as ``b"/a/b"`` inside the destination (``b"/"`` for the root)."""
    raw = os.fsencode(name)
    parts = [part for part in raw.split(b"/") if part not in (b"", b".")]
    if raw.startswith(b"/") or b".." in parts:
        raise ArtifactError(f"unsafe member name {name!r} in artifact")
    return b"/" + b"/".join(parts)


def _parent(rel: bytes) -> bytes:
    return rel.rsplit(b"/", 1)[0] or b"/"


class _Unpacker:
    def __init__(self, archive: tarfile.TarFile, dest: bytes) -> None:
        self._archive = archive
        self._dest = dest
        self._privileged = os.geteuid() == 0
        self._user = (os.geteuid(), os.getegid())
        self._directories: list[tuple[bytes, tarfile.TarInfo]] = []
        self._seen: set[bytes] = set()
        self._dirs: set[bytes] = set()
        self.members = 0
        self.bytes_written = 0

    def _check_owner(self, rel: bytes, info: tarfile.TarInfo) -> None:
        if not self._privileged and (info.uid, info.gid) != self._user:
            raise ArtifactError(
                f"member {os.fsdecode(rel)} belongs to {info.uid}:{info.gid}, which only root "
                f"can restore; unpack as root or build the image with "
                f"--owner {self._user[0]}:{self._user[1]}"
            )

    def _chown(self, path: bytes, info: tarfile.TarInfo) -> None:
        if self._privileged:
            os.chown(path, info.uid, info.gid, follow_symlinks=False)

    def member(self, info: tarfile.TarInfo) -> None:
        rel = _relative(info.name)
        if rel in self._seen:
            raise ArtifactError(f"member {info.name!r} appears twice in artifact")
        self._check_owner(rel, info)
        if rel == b"/":
            if not info.isdir():
                raise ArtifactError("the artifact's root member is not a directory")
            self._seen.add(rel)
            self._dirs.add(rel)
            self._chown(self._dest, info)
            self._directories.append((rel, info))
            self.members += 1
            return
        if _parent(rel) not in self._dirs:
            raise ArtifactError(f"member {info.name!r} has no directory parent in artifact")
        path = self._dest + rel
        if info.isreg():
            self._regular(path, info)
        elif info.isdir():
            os.mkdir(path, 0o700)
            self._chown(path, info)
            self._directories.append((rel, info))
        elif info.issym():
            os.symlink(os.fsencode(info.linkname), path)
            self._chown(path, info)
            os.utime(path, ns=(int(info.mtime) * 10**9,) * 2, follow_symlinks=False)
        elif info.isfifo():
            os.mkfifo(path, 0o600)
            self._chown(path, info)
            self._finish(path, info)
        elif info.ischr() or info.isblk():
            if not self._privileged:
                raise ArtifactError(f"device node {info.name!r} can only be unpacked by root")
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(info.devmajor, info.devminor))
            self._chown(path, info)
            self._finish(path, info)
        else:
            raise ArtifactError(f"member {info.name!r} has an unsupported type (hard link?)")
        self._seen.add(rel)
        if info.isdir():
            self._dirs.add(rel)
        self.members += 1

    def _regular(self, path: bytes, info: tarfile.TarInfo) -> None:
        source = self._archive.extractfile(info)
        if source is None:
            raise ArtifactError(f"member {info.name!r} has no content")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            remaining = info.size
            while remaining > 0:
                chunk = source.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ArtifactError(f"member {info.name!r} is truncated")
                os.write(fd, chunk)
                remaining -= len(chunk)
            self.bytes_written += info.size
            if self._privileged:
                os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, info.mode)  # after chown, which clears set-id bits
            os.utime(fd, ns=(int(info.mtime) * 10**9,) * 2)
        finally:
            os.close(fd)

    def _finish(self, path: bytes, info: tarfile.TarInfo) -> None:
        os.chmod(path, info.mode, follow_symlinks=False)
        os.utime(path, ns=(int(info.mtime) * 10**9,) * 2, follow_symlinks=False)

    def close(self) -> None:
        """Directory modes last, deepest first, so a read-only directory can be filled."""
        for rel, info in reversed(self._directories):
            path = self._dest + rel if rel != b"/" else self._dest
            self._finish(path, info)


def unpack_artifact(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> UnpackResult:
    """Unpack ``tar_path`` into ``dest``, which must not exist yet (its parent must).

    Raises ArtifactError for an unsafe or malformed artifact, or one that cannot
    be restored exactly by this user; OSError when ``dest`` cannot be created.
    A failed unpack leaves a partial ``dest`` for the caller to remove.
    """
    target = os.fsencode(dest).rstrip(b"/")
    os.mkdir(target, 0o700)
    try:
        with tarfile.open(tar_path, "r:", encoding="utf-8", errors="surrogateescape") as archive:
            unpacker = _Unpacker(archive, target)
            for info in archive:
                unpacker.member(info)
            if not unpacker.members:
                raise ArtifactError(f"{os.fspath(tar_path)} has no root directory member")
            unpacker.close()
    except tarfile.TarError as exc:
        raise ArtifactError(f"{os.fspath(tar_path)} is not a valid image artifact: {exc}") from exc
    return UnpackResult(
        dest=os.fsdecode(target), members=unpacker.members, bytes_written=unpacker.bytes_written
    )
