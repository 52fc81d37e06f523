"""Image artifacts for the local provider: a deterministic tarball of a root and its manifest.

``corral image build`` turns a root directory into ``OUT/image.tar``,
``OUT/manifest.pb`` and ``OUT/image.json``. The same tree always gives the same
bytes, so the tarball's SHA-256 is the image digest (``NAME@sha256:<hex>``):

- members come in one canonical order (depth first, names sorted as bytes, a
  directory before its children), in PAX format with numeric owners only;
- every mtime is :data:`EPOCH`; no atime, ctime, user or group names are stored;
- owners are normalised to one ``uid:gid`` (``0:0`` by default), because a
  build host's users are not part of an image. ``owner=None`` keeps the tree's
  numeric owners instead, for roots whose files belong to service users;
- every regular file is stored whole (hard links become copies); sockets
  cannot be archived and are left out of both the tarball and the manifest.

The manifest describes the tree *as it will be unpacked*: the entries a scan
under the policy would record (:func:`agent.scan.scanner.entry_from_stat`, the rules of
:mod:`agent.scan.rules`), with owners replaced as in the tarball, so an instance
unpacked by :func:`agent.image.unpack.unpack_artifact` verifies conformant.

One walk does everything: each file is opened once (relative to its open
directory) and read straight into the tar stream's buffer
(:class:`agent.image.tarwriter.TarWriter`), where its content digest is computed;
a worker thread hashes the larger files and the stream and writes it, so the
build uses two cores. The entries and the tarball therefore describe the same
bytes, and a file whose size changes while it is read fails the build.
"""

from __future__ import annotations

import gc
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from agent.errors import AgentError
from agent.image.bake import check_identity, image_document
from agent.image.secrets import SecretWarning, find_secrets
from agent.image.tarstream import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    REGULAR,
    SYMLINK,
    Header,
    encode_header,
    simple_header,
)
from agent.image.tarwriter import TarWriter
from agent.manifest.format import Entry, Manifest, digest_of
from agent.manifest.policy import Policy
from agent.paths import display_path
from agent.scan.entries import entry_from_stat
from agent.scan.rules import Exclusions, ignoring, include_roots

ARTIFACT_NAME = "image.tar"
MANIFEST_NAME = "manifest.pb"
IMAGE_JSON_NAME = "image.json"
EPOCH = 0
"""The mtime of every member (seconds since 1970); mtimes are not part of an image."""
ROOT_OWNER = (0, 0)

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DIR_FDS = 256
"""Directories deeper than this are reached by path instead of a held descriptor."""

_name_of = attrgetter("name")
_RECORD, _SEARCH, _SKIP = 0, 1, 2
"""What a directory's children give the manifest: entries (unless excluded); entries
only below an include root among them; nothing (the directory is excluded)."""


class ArtifactError(AgentError):
    """An artifact cannot be built or unpacked (unreadable tree, unsafe member, ...)."""


@dataclass(frozen=True)
class ArtifactResult:
    """What :func:`build_artifact` wrote and the identity it computed."""

    out_dir: str
    image_ref: str
    image_digest: str
    manifest_digest: str
    manifest: Manifest
    member_count: int
    image_json: dict[str, Any]
    warnings: tuple[SecretWarning, ...] = ()


@dataclass
class _Listing:
    """A directory being archived: its children in canonical order and what they record."""

    fd: int | None
    prefix: bytes
    children: Iterator[os.DirEntry[bytes]]
    state: int
    check_excludes: bool


class _Archiver:
    """One walk of a root: tar members in canonical order, manifest entries on the way."""

    def __init__(
        self, base: bytes, writer: TarWriter, *, policy: Policy, owner: tuple[int, int] | None
    ) -> None:
        self._base = base
        self._writer = writer
        self._owner = owner
        self._policy = policy
        self._exclusions = Exclusions(policy)
        self._roots = set(include_roots(policy))
        self._strip: Callable[[Entry], Entry] | None = ignoring(policy)
        self._device: int | None = None
        self._stack: list[_Listing] = []
        self.entries: list[Entry] = []
        self.files: list[tuple[bytes, os.stat_result, int]] = []
        """Recorded regular files: path, stat and index of their digest in the writer."""
        self.members = 0

    def _header(self, name: bytes, kind: bytes, st: os.stat_result, **fields: Any) -> bytes:
        uid, gid = self._owner if self._owner is not None else (st.st_uid, st.st_gid)
        self.members += 1
        block = None
        if not fields or "size" in fields or "linkname" in fields:
            block = simple_header(name, kind, mode=st.st_mode, uid=uid, gid=gid, **fields)
        if block is None:
            mode = stat.S_IMODE(st.st_mode)
            block = encode_header(Header(name, kind, mode, uid, gid, mtime=EPOCH, **fields))
        return block

    def _record(
        self, path: bytes, st: os.stat_result, *, digest: bytes = b"", target: bytes = b""
    ) -> None:
        entry = entry_from_stat(path, st, digest=digest, target=target, owner=self._owner)
        if entry is not None:
            self.entries.append(entry if self._strip is None else self._strip(entry))

    def finish_entries(self) -> list[Entry]:
        """Every entry, once the writer is closed and the files' digests are known."""
        digests = self._writer.digests
        for path, st, index in self.files:
            self._record(path, st, digest=digests[index])
        self.files = []
        return self.entries

    def run(self) -> None:
        """Archive the whole root; the caller closes the writer."""
        base = self._base or b"/"
        root_st = os.lstat(base)
        if self._policy.one_filesystem:
            self._device = root_st.st_dev
        state = _RECORD if b"/" in self._roots else _SEARCH
        if state == _RECORD:
            self._record(b"/", root_st)
        self._writer.write(self._header(b".", DIRECTORY, root_st))
        try:
            self._enter(b"/", os.open(base, _DIR_FLAGS), state)
            while self._stack:
                listing = self._stack[-1]
                if not self._archive_children(listing):
                    self._stack.pop()
                    if listing.fd is not None:
                        os.close(listing.fd)
        finally:
            for listing in self._stack:
                if listing.fd is not None:
                    os.close(listing.fd)

    def _enter(self, path: bytes, fd: int | None, state: int) -> None:
        """Push the listing of the directory ``path`` (opened as ``fd``)."""
        with os.scandir(self._base + path) as entries:
            children = sorted(entries, key=_name_of)  # C-level key
        prefix = path if path == b"/" else path + b"/"
        check = state == _RECORD and self._exclusions.may_exclude(path)
        self._stack.append(_Listing(fd, prefix, iter(children), state, check))

    def _archive_children(self, listing: _Listing) -> bool:
        """Archive ``listing``'s children up to its next subdirectory (True) or the end."""
        prefix, dir_fd, state = listing.prefix, listing.fd, listing.state
        excludes = self._policy.excludes if listing.check_excludes else None
        roots = self._roots
        for child in listing.children:
            name = child.name
            path = prefix + name
            if state == _RECORD:
                recorded = excludes is None or not excludes(path)
            else:
                recorded = state == _SEARCH and path in roots
            if child.is_file(follow_symlinks=False):
                self._file(
                    path, name if dir_fd is not None else self._base + path, dir_fd, recorded
                )
            elif self._other(path, name, dir_fd, recorded, state):
                return True
        return False

    def _file(self, path: bytes, name: bytes, dir_fd: int | None, recorded: bool) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise ArtifactError(f"cannot read {display_path(path)}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{display_path(path)} was replaced while building")
            size = st.st_size
            uid, gid = self._owner if self._owner is not None else (st.st_uid, st.st_gid)
            header = simple_header(path[1:], REGULAR, mode=st.st_mode, uid=uid, gid=gid, size=size)
            if header is None:
                header = self._header(path[1:], REGULAR, st, size=size)
            else:
                self.members += 1
            index = self._writer.add_file(header, fd, size)
        finally:
            os.close(fd)
        if index is None:
            raise ArtifactError(f"{display_path(path)} changed while the image was being built")
        if recorded:
            self.files.append((path, st, index))

    def _other(
        self, path: bytes, name: bytes, dir_fd: int | None, recorded: bool, state: int
    ) -> bool:
        """Archive a child that is not a regular file; True when it is a directory entered."""
        st = os.stat(
            name if dir_fd is not None else self._base + path, dir_fd=dir_fd, follow_symlinks=False
        )
        mode = st.st_mode
        rel = path[1:]
        target = b""
        if stat.S_ISDIR(mode):
            self._writer.write(self._header(rel, DIRECTORY, st))
            if recorded:
                self._record(path, st)
            if self._device is not None and st.st_dev != self._device:
                return False  # another filesystem: recorded, not entered (as a scan does)
            fd = None
            if len(self._stack) < _MAX_DIR_FDS and dir_fd is not None:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            child_state = _RECORD if recorded else (_SEARCH if state == _SEARCH else _SKIP)
            self._enter(path, fd, child_state)
            return True
        if stat.S_ISLNK(mode):
            target = os.readlink(name if dir_fd is not None else self._base + path, dir_fd=dir_fd)
            self._writer.write(self._header(rel, SYMLINK, st, linkname=target))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = CHAR_DEVICE if stat.S_ISCHR(mode) else BLOCK_DEVICE
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._writer.write(self._header(rel, kind, st, devmajor=major, devminor=minor))
        elif stat.S_ISFIFO(mode):
            self._writer.write(self._header(rel, FIFO, st))
        else:
            return False  # a socket: neither archived nor recorded
        if recorded:
            self._record(path, st, target=target)
        return False


def _archive(
    base: bytes, tar_path: str, *, policy: Policy, owner: tuple[int, int] | None
) -> tuple[Manifest, int, str]:
    """Write the tarball of ``base`` to ``tar_path``.

    Returns the manifest, the number of members and the tarball's hex SHA-256.
    """
    fd = os.open(tar_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    writer = TarWriter(fd)
    # The walk allocates a tuple per object and frees none: the cyclic collector
    # would re-examine the growing entry list again and again (as in a scan).
    collecting = gc.isenabled()
    gc.disable()
    try:
        archiver = _Archiver(base, writer, policy=policy, owner=owner)
        try:
            archiver.run()
        except OSError as exc:
            raise ArtifactError(f"cannot archive {os.fsdecode(base or b'/')}: {exc}") from exc
        writer.finish()
        tar_hex = writer.close()
        return Manifest.build(policy, archiver.finish_entries()), archiver.members, tar_hex
    finally:
        if collecting:
            gc.enable()
        try:
            writer.close()  # stops the worker on every path; a no-op after success
        finally:
            os.close(fd)


def build_artifact(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    policy: Policy,
    owner: tuple[int, int] | None = ROOT_OWNER,
) -> ArtifactResult:
    """Archive ``root`` into ``out_dir`` and write its manifest and ``image.json``.

    Raises ArtifactError when the root is not a directory, ``out_dir`` lies
    inside it, a file cannot be read or the tree changes during the build;
    BakeError for an invalid name or version; OSError when ``out_dir`` cannot
    be written.
    """
    check_identity(name, version)
    base = os.fsencode(os.path.abspath(root)).rstrip(b"/")
    if not os.path.isdir(base or b"/"):
        raise ArtifactError(f"image root {os.fsdecode(base)} is not a directory")
    real_root = os.path.realpath(base or b"/")
    real_out = os.fsencode(os.path.realpath(out_dir))
    if os.path.commonpath([real_root, real_out]) == real_root:
        raise ArtifactError(
            f"output directory {os.fspath(out_dir)} is inside the image root; "
            "an image must not contain its own artifact"
        )
    os.makedirs(out_dir, exist_ok=True)
    tar_path = os.path.join(out_dir, ARTIFACT_NAME)
    partial = f"{tar_path}.{os.getpid()}.partial"
    try:
        manifest, members, tar_hex = _archive(base, partial, policy=policy, owner=owner)
    except BaseException:
        os.unlink(partial)
        raise
    encoded = manifest.encode()
    manifest_digest = digest_of(encoded)
    image_digest = "sha256:" + tar_hex
    warnings = find_secrets(base or b"/", manifest.entries)
    document = image_document(
        manifest, manifest_digest, name=name, version=version, warnings=len(warnings)
    )
    document.update(
        image_ref=f"{name}@{image_digest}", image_digest=image_digest, artifact=ARTIFACT_NAME
    )
    _write_atomic(os.path.join(out_dir, MANIFEST_NAME), encoded)
    _write_atomic(
        os.path.join(out_dir, IMAGE_JSON_NAME),
        (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(),
    )
    os.replace(partial, tar_path)
    return ArtifactResult(
        out_dir=os.fspath(out_dir),
        image_ref=document["image_ref"],
        image_digest=image_digest,
        manifest_digest=manifest_digest,
        manifest=manifest,
        member_count=members,
        image_json=document,
        warnings=tuple(warnings),
    )


def _write_atomic(path: str, data: bytes) -> None:
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)
