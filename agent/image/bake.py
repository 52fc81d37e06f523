"""Bake an image's manifest: scan a root once, at build time, and write what it must stay.

The root is a directory, or an image artifact (``oci-archive:``, ``oci:``,
``docker-archive:``) whose layers are applied in memory (:mod:`agent.image.oci`):
the same manifest as baking the root the engine would unpack, with the OCI
manifest digest as the image's identity.

``bake`` writes two files into an output directory:

- ``manifest.pb``: the canonical manifest (policy + every entry), see docs/manifest.md;
- ``image.json``: the image's identity for the controller and the agent.

Both are deterministic (no timestamps, sorted keys): baking the same tree with
the same policy twice gives byte-identical files. Each is written to a temporary
file in the output directory and renamed over the target, so a reader never
sees half a file. Secret-looking files are reported as warnings; with
``strict`` they fail the bake before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from agent.collector import collector_paused
from agent.errors import AgentError
from agent.image.oci.blobs import SourceError
from agent.image.oci.layers import MAX_MEMBERS, ROOT_MODE, ImageTree
from agent.image.oci.source import ImageInfo, is_image_source, open_image
from agent.image.oci.tarheader import LayerError
from agent.image.secrets import SecretsFoundError, SecretWarning, find_secrets
from agent.manifest.format import FORMAT_VERSION, Manifest, digest_of
from agent.manifest.policy import Policy
from agent.scan.result import Progress
from agent.scan.scanner import scan

MANIFEST_FILE = "manifest.pb"
IMAGE_FILE = "image.json"

# OCI distribution grammar for a repository name and a tag.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class BakeError(AgentError):
    """The bake cannot run: bad root, name, version or output directory."""


@dataclass(frozen=True)
class BakeResult:
    """What a bake wrote: the manifest, its digest, image.json's content and warnings."""

    manifest: Manifest
    manifest_digest: str
    image: dict[str, Any]
    warnings: tuple[SecretWarning, ...]
    manifest_path: str
    image_path: str
    files_hashed: int
    bytes_hashed: int
    scan_errors: int
    seconds: float


def default_name(root: str | os.PathLike[str]) -> str:
    """An image name from the root's base name, made valid for a reference."""
    base = os.path.basename(os.path.realpath(root)).lower()
    name = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    return name or "root"


def check_identity(name: str, version: str) -> None:
    """Raise BakeError unless ``name`` and ``version`` can form an image reference."""
    if not _NAME.fullmatch(name):
        raise BakeError(
            f"image name {name!r} is not a valid reference name "
            "(lower-case letters, digits, '.', '_', '-' and '/' between components)"
        )
    if not _VERSION.fullmatch(version):
        raise BakeError(
            f"version {version!r} is not a valid tag (letters, digits, '_', '.', '-'; "
            "at most 128 characters, not starting with '.' or '-')"
        )


def _exclude_out_dir(root: str, out_dir: str, policy: Policy) -> Policy:
    """The policy, plus an exclude for ``out_dir`` when it lies inside ``root``.

    Baking ``/`` into ``/etc/corral`` is the usual image-build step; without this
    the manifest would describe the previous manifest and drift at once.
    """
    real_root = os.path.realpath(root)
    real_out = os.path.realpath(out_dir)
    if os.path.commonpath([real_root, real_out]) != real_root:
        return policy
    inside = "/" + os.path.relpath(real_out, real_root) if real_out != real_root else "/"
    if inside == "/":
        raise BakeError(f"output directory {out_dir} is the root being baked")
    if policy.excludes(os.fsencode(inside)):
        return policy
    pattern = re.sub(r"([*?\[])", r"[\1]", inside)  # the directory's name, not a glob
    return dataclasses.replace(policy, exclude=(*policy.exclude, pattern))


def _write_atomically(directory: str, name: str, data: bytes) -> str:
    """Write ``directory/name`` through a temporary file and a rename; returns the path."""
    target = os.path.join(directory, name)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return target


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def image_document(
    manifest: Manifest, digest: str, *, name: str, version: str, warnings: int
) -> dict[str, Any]:
    """The content of image.json for a plain root directory (image digest = manifest digest)."""
    return {
        "name": name,
        "version": version,
        "image_ref": f"{name}@{digest}",
        "image_digest": digest,
        "manifest_digest": digest,
        "root": manifest.root.hex(),
        "entry_count": len(manifest.entries),
        "byte_count": manifest.byte_count,
        "policy": manifest.policy.to_json(),
        "format_version": FORMAT_VERSION,
        "secrets_warnings": warnings,
    }


def _write(out_dir: str, encoded: bytes, image: dict[str, Any]) -> tuple[str, str]:
    """Write manifest.pb and image.json atomically; returns their paths."""
    document = (json.dumps(image, indent=2, sort_keys=True) + "\n").encode()
    try:
        os.makedirs(out_dir, exist_ok=True)
        manifest_path = _write_atomically(out_dir, MANIFEST_FILE, encoded)
        image_path = _write_atomically(out_dir, IMAGE_FILE, document)
        _fsync_directory(out_dir)
    except OSError as exc:
        raise BakeError(f"cannot write to {out_dir}: {exc.strerror or exc}") from exc
    return manifest_path, image_path


def bake(
    root: str,
    out_dir: str,
    *,
    policy: Policy,
    name: str | None = None,
    version: str | None = None,
    progress: Progress | None = None,
    strict: bool = False,
    root_mode: int = ROOT_MODE,
) -> BakeResult:
    """Scan ``root`` under ``policy`` and write manifest.pb and image.json into ``out_dir``.

    ``root`` is a directory, or an image source (``oci-archive:PATH``,
    ``oci:DIR[:REF]``, ``docker-archive:PATH``: see :func:`bake_image`).
    ``name`` defaults to the root's base name. Raises BakeError for a missing
    root, an invalid name or version, or an unwritable output directory, and
    SecretsFoundError (nothing written) when ``strict`` and secrets were found.
    """
    if is_image_source(root):
        return bake_image(
            root,
            out_dir,
            policy=policy,
            name=name,
            version=version,
            progress=progress,
            strict=strict,
            root_mode=root_mode,
        )
    name = default_name(root) if name is None else name
    version = "0" if version is None else version
    check_identity(name, version)
    if not os.path.isdir(root):
        raise BakeError(f"root {root} is not a directory")
    policy = _exclude_out_dir(root, out_dir, policy)
    result = scan(root, policy, cache=None, full_rehash=True, progress=progress)
    manifest = Manifest.build(policy, result.entries)
    warnings = tuple(find_secrets(root, manifest.entries))
    if strict and warnings:
        raise SecretsFoundError(warnings)
    encoded = manifest.encode()
    digest = digest_of(encoded)
    image = image_document(manifest, digest, name=name, version=version, warnings=len(warnings))
    manifest_path, image_path = _write(out_dir, encoded, image)
    return BakeResult(
        manifest=manifest,
        manifest_digest=digest,
        image=image,
        warnings=warnings,
        manifest_path=manifest_path,
        image_path=image_path,
        files_hashed=result.files_hashed,
        bytes_hashed=result.bytes_hashed,
        scan_errors=result.errors,
        seconds=result.seconds,
    )


@dataclass(frozen=True)
class _SourceIdentity:
    name: str
    version: str
    repository: str
    """Where engines find the image: ``image_ref`` is ``REPOSITORY@DIGEST``."""


def _identity_from_source(
    info: ImageInfo, spec: str, name: str | None, version: str | None
) -> _SourceIdentity:
    """Name, version and repository: as given, else from the source's own name for the image.

    ``localhost/app:1`` in the source gives name ``app`` (the controller's image
    names have no ``/``), version ``1`` and repository ``localhost/app``.
    """
    ref_name = info.ref_name or ""
    repository, sep, tag = ref_name.rpartition(":")
    if not sep or "/" in tag:
        repository, tag = (ref_name, "") if "/" in ref_name else ("", ref_name)
    if repository and not _NAME.fullmatch(repository):
        repository = ""
    if name is None:
        if repository:
            name = repository.rsplit("/", 1)[-1]
        else:
            path = spec.partition(":")[2]
            stem = os.path.basename(path.rstrip("/")).split(":")[0].removesuffix(".tar")
            name = default_name(stem or "image")
    if version is None:
        version = tag if tag and _VERSION.fullmatch(tag) else "0"
    return _SourceIdentity(name=name, version=version, repository=repository or name)


def image_source_document(
    manifest: Manifest,
    digest: str,
    info: ImageInfo,
    *,
    name: str,
    version: str,
    repository: str,
    warnings: int,
) -> dict[str, Any]:
    """image.json for an image baked from its artifact: identity is the OCI digest.

    ``image_digest`` (and the digest in ``image_ref``) is the OCI manifest
    digest, the one an engine pulls or runs as ``repo@sha256:...``. A docker
    archive carries no manifest (one is written when the image is pushed), so
    there it is the config digest, the image ID every engine accepts.
    ``image_ref`` names the image's repository in the source (``localhost/app``),
    so an engine resolves it; ``name`` is its last component.
    """
    image_digest = info.manifest_digest or info.config_digest
    document = image_document(manifest, digest, name=name, version=version, warnings=warnings)
    document.update(
        image_ref=f"{repository}@{image_digest}",
        image_digest=image_digest,
        oci_manifest_digest=info.manifest_digest,
        config_digest=info.config_digest,
        source=info.scheme,
        layer_count=len(info.layers),
    )
    return document


def bake_image(
    spec: str,
    out_dir: str,
    *,
    policy: Policy,
    name: str | None = None,
    version: str | None = None,
    progress: Progress | None = None,
    strict: bool = False,
    root_mode: int = ROOT_MODE,
    max_members: int = MAX_MEMBERS,
) -> BakeResult:
    """Bake an image from its artifact: apply its layers in memory and write the manifest.

    The manifest is the one :func:`bake` writes for the image's unpacked root
    (see :mod:`agent.image.oci.layers` for the rules). ``name`` and ``version``
    default to the image's name and tag in the source. ``root_mode`` is the
    mode of the root directory when no layer sets it: 0555 as Podman and
    CRI-O unpack, 0755 as Docker and containerd do. Raises BakeError for
    an unreadable or unsafe source, SecretsFoundError as :func:`bake`.
    """
    started = time.monotonic()
    tree = ImageTree(root_mode=root_mode, max_members=max_members, progress=progress)
    try:
        # an image tree: a node per path (100,000 files: listing its entries took
        # 0.31 s with the collector running, 0.16 s without)
        with collector_paused(), tree:
            with open_image(spec) as image:
                identity = _identity_from_source(image.info, spec, name, version)
                check_identity(identity.name, identity.version)
                for number, layer in enumerate(image.info.layers, start=1):
                    with image.layer_in_place(layer) as stream:
                        tree.apply(stream, f"{image.label}: layer {number} ({layer.path})")
                info = image.info
            entries = tree.entries(policy)
    except (SourceError, LayerError) as exc:
        raise BakeError(str(exc)) from exc
    manifest = Manifest.build(policy, entries)
    warnings = tuple(tree.warnings(entries))
    if strict and warnings:
        raise SecretsFoundError(warnings)
    encoded = manifest.encode()
    digest = digest_of(encoded)
    document = image_source_document(
        manifest,
        digest,
        info,
        name=identity.name,
        version=identity.version,
        repository=identity.repository,
        warnings=len(warnings),
    )
    manifest_path, image_path = _write(out_dir, encoded, document)
    return BakeResult(
        manifest=manifest,
        manifest_digest=digest,
        image=document,
        warnings=warnings,
        manifest_path=manifest_path,
        image_path=image_path,
        files_hashed=tree.files_hashed,
        bytes_hashed=tree.bytes_hashed,
        scan_errors=0,
        seconds=time.monotonic() - started,
    )
