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

The manifest describes the tree *as it will be unpacked*: the source is scanned
with the policy, then owners are replaced as in the tarball, so an instance
unpacked by :func:`agent.unpack.unpack_artifact` verifies conformant. Content is
read once: the digests computed while archiving feed the scan through a
:class:`~agent.scan.StatCache`, and a file that changes between the two passes
fails the build instead of producing a manifest that disagrees with the tarball.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from agent.bake import _check_identity as check_identity
from agent.bake import image_document
from agent.errors import AgentError
from agent.manifest import Entry, Manifest, digest_of
from agent.policy import Policy
from agent.scan import StatCache, scan
from agent.secrets import SecretWarning, find_secrets
from agent.tarstream import (
    BLOCK,
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    REGULAR,
    SYMLINK,
    HashingSink,
    Header,
    encode_header,
    simple_header,
)

ARTIFACT_NAME = "image.tar"
MANIFEST_NAME = "manifest.pb"
IMAGE_JSON_NAME = "image.json"
EPOCH = 0
"""The mtime of every member (seconds since 1970); mtimes are not part of an image."""
ROOT_OWNER = (0, 0)

_CHUNK = 1 << 20
_ZEROS = bytes(BLOCK)


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


class _Archiver:
    """Streams one root into a tarball, recording content digests for the scan."""

    def __init__(self, base: bytes, sink: HashingSink, owner: tuple[int, int] | None) -> None:
        self._base = base
        self._sink = sink
        self._owner = owner
        self.cache = StatCache()
        self.members = 0
        self.sockets: set[bytes] = set()

    def _header(self, name: bytes, kind: bytes, st: os.stat_result, **fields: Any) -> None:
        uid, gid = self._owner if self._owner is not None else (st.st_uid, st.st_gid)
        block = None
        if not fields or "size" in fields or "linkname" in fields:
            block = simple_header(name, kind, mode=st.st_mode, uid=uid, gid=gid, **fields)
        if block is None:
            mode = stat.S_IMODE(st.st_mode)
            block = encode_header(Header(name, kind, mode, uid, gid, mtime=EPOCH, **fields))
        self._sink.write(block)
        self.members += 1

    def _file(self, rel: bytes) -> None:
        path = self._base + rel
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArtifactError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{os.fsdecode(path)} was replaced while building")
            size = st.st_size
            self._header(rel[1:], REGULAR, st, size=size)
            if size <= _CHUNK:
                data = os.read(fd, size)
                content = hashlib.sha256(data)
                self._sink.write(data)
                remaining = size - len(data)
            else:
                content = hashlib.sha256()
                remaining = size
            while remaining > 0:
                chunk = os.read(fd, min(_CHUNK, remaining))
                if not chunk:
                    raise ArtifactError(f"{os.fsdecode(path)} shrank while building")
                content.update(chunk)
                self._sink.write(chunk)
                remaining -= len(chunk)
        finally:
            os.close(fd)
        if size % BLOCK:
            self._sink.write(_ZEROS[: -size % BLOCK])
        self.cache.store(rel, st, content.digest())

    def directory(self, rel: bytes, st: os.stat_result, device: int | None) -> None:
        """Archive the directory ``rel`` (``b"/"`` for the root) and its subtree."""
        self._header(rel[1:] or b".", DIRECTORY, st)
        if device is not None and st.st_dev != device:
            return  # another filesystem: recorded, not entered (as the scanner does)
        prefix = rel if rel != b"/" else b""
        with os.scandir(self._base + rel) as listing:
            children = sorted(listing, key=_name_of)
        for child in children:
            path = prefix + b"/" + child.name
            if child.is_file(follow_symlinks=False):
                self._file(path)
            else:
                self.other(path, child.stat(follow_symlinks=False), device)

    def other(self, rel: bytes, st: os.stat_result, device: int | None) -> None:
        name = rel[1:]
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self.directory(rel, st, device)
        elif stat.S_ISREG(mode):
            self._file(rel)
        elif stat.S_ISLNK(mode):
            self._header(name, SYMLINK, st, linkname=os.readlink(self._base + rel))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = CHAR_DEVICE if stat.S_ISCHR(mode) else BLOCK_DEVICE
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._header(name, kind, st, devmajor=major, devminor=minor)
        elif stat.S_ISFIFO(mode):
            self._header(name, FIFO, st)
        else:
            self.sockets.add(rel)


def _name_of(entry: os.DirEntry[bytes]) -> bytes:
    return entry.name


def _as_unpacked(entry: Entry, policy: Policy, owner: tuple[int, int] | None) -> Entry:
    """``entry`` with the owner the unpacked instance will have."""
    if owner is None:
        return entry
    uid = 0 if policy.ignores("uid") else owner[0]
    gid = 0 if policy.ignores("gid") else owner[1]
    return entry._replace(uid=uid, gid=gid)


def _archive(
    base: bytes, tar_path: str, *, policy: Policy, owner: tuple[int, int] | None
) -> tuple[_Archiver, str]:
    """Write the tarball of ``base`` to ``tar_path``; returns the archiver and its hex digest."""
    fd = os.open(tar_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    sink = HashingSink(fd)
    try:
        archiver = _Archiver(base, sink, owner)
        root_st = os.stat(base or b"/")
        device = root_st.st_dev if policy.one_filesystem else None
        try:
            archiver.directory(b"/", root_st, device)
        except OSError as exc:
            raise ArtifactError(f"cannot archive {os.fsdecode(base)}: {exc}") from exc
        sink.finish_archive()
        return archiver, sink.close()
    finally:
        try:
            sink.close()  # stops the worker on every path; a no-op after success
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
        archiver, tar_hex = _archive(base, partial, policy=policy, owner=owner)
        scanned = scan(base or b"/", policy, cache=archiver.cache, workers=0)
        if scanned.files_hashed or scanned.errors:
            raise ArtifactError(f"{os.fsdecode(base)} changed while the image was being built")
    except BaseException:
        os.unlink(partial)
        raise
    entries = [
        _as_unpacked(entry, policy, owner)
        for entry in scanned.entries
        if entry.path not in archiver.sockets
    ]
    manifest = Manifest.build(policy, entries)
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
        member_count=archiver.members,
        image_json=document,
        warnings=tuple(warnings),
    )


def _write_atomic(path: str, data: bytes) -> None:
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)
