"""Find an image's manifest, config and layers in an archive or layout, and stream its layers.

Three sources, named as skopeo and podman name them:

- ``oci-archive:PATH[:REF]``: a tar of an OCI image layout (``podman save
  --format oci-archive``, ``skopeo copy ... oci-archive:``);
- ``oci:DIR[:REF]``: an OCI image layout directory;
- ``docker-archive:PATH``: what ``docker save`` and ``podman save`` write by
  default (``manifest.json`` naming a config and layer tars).

``REF`` picks a manifest by its ``org.opencontainers.image.ref.name``
annotation; without it the layout must hold exactly one. An image index
(multi-platform) resolves to the manifest for this machine's architecture.

Nothing is extracted: blobs are read in place (the outer archive is a plain
tar, read with seeks) and every blob is checked against its digest as it is
read: JSON documents before they are trusted, layers once their stream ends
(the compressed bytes against the manifest's descriptor, the uncompressed
ones against the config's ``rootfs.diff_ids``). A layer's compression comes
from its media type (gzip, zstd or none); a docker archive names none, so its
layers are recognised by their first bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from agent.image.oci.blobs import ArchiveBlobs, Blobs, DirectoryBlobs, Region, SourceError
from agent.image.oci.placed import PlacedLayer
from agent.image.oci.streams import ZSTD_MAGIC, LayerStream, compression_detected

SCHEMES = ("oci-archive", "oci", "docker-archive")
MAX_DOCUMENT = 4 << 20
"""Largest JSON document (index, manifest, config) read, in bytes."""

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_REF_NAME = "org.opencontainers.image.ref.name"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def is_image_source(text: str) -> bool:
    """Whether ``text`` names an image source (``scheme:...``) rather than a directory."""
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme in SCHEMES


def compression_of(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type; SourceError when unknown."""
    base = media_type.replace(".nondistributable", "").replace(".foreign", "")
    table = {
        "application/vnd.oci.image.layer.v1.tar": "none",
        "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
        "application/vnd.docker.image.rootfs.diff.tar": "none",
        "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
    }
    try:
        return table[base]
    except KeyError:
        raise SourceError(f"unsupported layer media type {media_type!r}") from None


@dataclass(frozen=True)
class Layer:
    """One layer blob: where it is and what it must hash to."""

    path: str
    """The blob's path inside the layout or archive."""
    compression: str
    """``gzip``, ``zstd``, ``none``, or ``detect`` (sniff the first bytes)."""
    digest: str | None
    """The digest of the blob as stored (None: a docker archive, which names none)."""
    size: int | None
    diff_id: str | None
    """The digest of the uncompressed tar, from the config's ``rootfs.diff_ids``."""


@dataclass(frozen=True)
class ImageInfo:
    """What the source says about the image."""

    scheme: str
    manifest_digest: str | None
    """The OCI manifest's digest (the one in ``repo@sha256:...``); None for a docker archive."""
    config_digest: str
    """The config blob's digest: the image ID engines report."""
    ref_name: str | None
    """The name the source gives the image (an annotation or a RepoTag), if any."""
    layers: tuple[Layer, ...]


def _read_document(blobs: Blobs, path: str, label: str, digest: str | None = None) -> Any:
    with blobs.open(path) as handle:
        data = handle.read(MAX_DOCUMENT + 1)
    if len(data) > MAX_DOCUMENT:
        raise SourceError(f"{label}: {path} is larger than {MAX_DOCUMENT} bytes")
    if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise SourceError(f"{label}: {path} does not match its digest {digest}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise SourceError(f"{label}: {path} is not valid JSON: {exc}") from exc


def _digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise SourceError(f"{what}: {value!r} is not a sha256 digest")
    return value


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _field(document: Any, key: str, kind: type, what: str) -> Any:
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, kind):
        raise SourceError(f"{what} has no valid {key!r}")
    return value


def _host_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", _ARCHITECTURES.get(machine, machine)


def _pick(descriptors: list[Any], reference: str | None, label: str) -> dict[str, Any]:
    if not all(isinstance(d, dict) for d in descriptors):
        raise SourceError(f"{label}: index.json lists malformed descriptors")
    if reference is not None:
        named = [
            d
            for d in descriptors
            if (d.get("annotations") or {}).get(_REF_NAME) in (reference, reference.split(":")[-1])
        ]
        if not named:
            names = sorted({str((d.get("annotations") or {}).get(_REF_NAME)) for d in descriptors})
            raise SourceError(f"{label}: no image named {reference!r} (has: {', '.join(names)})")
        descriptors = named
    if len(descriptors) != 1:
        names = sorted({str((d.get("annotations") or {}).get(_REF_NAME)) for d in descriptors})
        raise SourceError(
            f"{label}: holds {len(descriptors)} images; name one as ...:REF "
            f"(has: {', '.join(names)})"
        )
    picked: dict[str, Any] = descriptors[0]
    return picked


def _resolve_index(blobs: Blobs, descriptor: dict[str, Any], label: str) -> dict[str, Any]:
    """Follow image indexes down to the manifest for this machine's platform."""
    for _ in range(4):
        if descriptor.get("mediaType") not in _INDEX_TYPES:
            return descriptor
        digest = _digest(descriptor.get("digest"), f"{label}: index descriptor")
        index = _read_document(blobs, _blob_path(digest), label, digest)
        wanted = _host_platform()
        matches = [
            d
            for d in _field(index, "manifests", list, f"{label}: index {digest}")
            if isinstance(d, dict)
            and (
                (d.get("platform") or {}).get("os"),
                (d.get("platform") or {}).get("architecture"),
            )
            == wanted
        ]
        if not matches:
            raise SourceError(f"{label}: index {digest} has no manifest for {'/'.join(wanted)}")
        descriptor = matches[0]
    raise SourceError(f"{label}: image indexes nested too deeply")


def _oci_image(blobs: Blobs, scheme: str, reference: str | None, label: str) -> ImageInfo:
    if not blobs.exists("index.json"):
        raise SourceError(f"{label} is not an OCI image layout (no index.json)")
    index = _read_document(blobs, "index.json", label)
    descriptors = _field(index, "manifests", list, f"{label}: index.json")
    chosen = _pick(descriptors, reference, label)
    ref_name = (chosen.get("annotations") or {}).get(_REF_NAME)
    descriptor = _resolve_index(blobs, chosen, label)
    media_type = descriptor.get("mediaType")
    if media_type not in _MANIFEST_TYPES:
        raise SourceError(f"{label}: unsupported manifest media type {media_type!r}")
    manifest_digest = _digest(descriptor.get("digest"), f"{label}: manifest descriptor")
    manifest = _read_document(blobs, _blob_path(manifest_digest), label, manifest_digest)
    what = f"{label}: manifest {manifest_digest}"
    config = _field(manifest, "config", dict, what)
    config_digest = _digest(config.get("digest"), f"{what} config")
    diff_ids = _diff_ids(blobs, _blob_path(config_digest), label, config_digest)
    layers = []
    descriptors = _field(manifest, "layers", list, what)
    if len(descriptors) != len(diff_ids):
        raise SourceError(f"{what}: {len(descriptors)} layers but {len(diff_ids)} diff_ids")
    for layer, diff_id in zip(descriptors, diff_ids, strict=True):
        if not isinstance(layer, dict):
            raise SourceError(f"{what}: malformed layer descriptor")
        digest = _digest(layer.get("digest"), f"{what} layer")
        size = layer.get("size")
        layers.append(
            Layer(
                path=_blob_path(digest),
                compression=compression_of(str(layer.get("mediaType"))),
                digest=digest,
                size=size if isinstance(size, int) else None,
                diff_id=diff_id,
            )
        )
    return ImageInfo(
        scheme=scheme,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        ref_name=ref_name if isinstance(ref_name, str) else None,
        layers=tuple(layers),
    )


def _diff_ids(blobs: Blobs, path: str, label: str, digest: str | None) -> list[str]:
    config = _read_document(blobs, path, label, digest)
    rootfs = _field(config, "rootfs", dict, f"{label}: image config")
    return [
        _digest(item, f"{label}: config diff_id")
        for item in _field(rootfs, "diff_ids", list, f"{label}: image config rootfs")
    ]


def _docker_image(blobs: Blobs, label: str) -> ImageInfo:
    if not blobs.exists("manifest.json"):
        raise SourceError(f"{label} is not a docker archive (no manifest.json)")
    listing = _read_document(blobs, "manifest.json", label)
    if not isinstance(listing, list) or len(listing) != 1 or not isinstance(listing[0], dict):
        count = len(listing) if isinstance(listing, list) else 0
        raise SourceError(f"{label}: manifest.json must describe exactly one image (has {count})")
    entry = listing[0]
    what = f"{label}: manifest.json"
    config_path = _field(entry, "Config", str, what)
    with blobs.open(config_path) as handle:
        config_bytes = handle.read(MAX_DOCUMENT + 1)
    if len(config_bytes) > MAX_DOCUMENT:
        raise SourceError(f"{label}: {config_path} is larger than {MAX_DOCUMENT} bytes")
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    diff_ids = _diff_ids(blobs, config_path, label, config_digest)
    paths = _field(entry, "Layers", list, what)
    if len(paths) != len(diff_ids) or not all(isinstance(p, str) for p in paths):
        raise SourceError(f"{what}: {len(paths)} layers but {len(diff_ids)} diff_ids")
    tags = entry.get("RepoTags")
    ref_name = tags[0] if isinstance(tags, list) and tags and isinstance(tags[0], str) else None
    return ImageInfo(
        scheme="docker-archive",
        manifest_digest=None,
        config_digest=config_digest,
        ref_name=ref_name,
        layers=tuple(
            Layer(path=p, compression="detect", digest=None, size=None, diff_id=d)
            for p, d in zip(paths, diff_ids, strict=True)
        ),
    )


class OpenImage:
    """An opened image source: its :class:`ImageInfo` and a way to stream each layer."""

    def __init__(self, info: ImageInfo, blobs: Blobs, label: str) -> None:
        self.info = info
        self.label = label
        self._blobs = blobs

    @contextlib.contextmanager
    def layer(self, layer: Layer) -> Iterator[LayerStream]:
        """The layer's uncompressed tar stream; its digests are checked when the block ends.

        The caller reads the tar from the stream; whatever it leaves unread is
        read here before the digests are compared.
        """
        with self._blobs.open(layer.path) as handle, contextlib.ExitStack() as threads:
            try:
                stream = LayerStream(handle, layer.compression)
                threads.callback(stream.close)
                yield stream
                stream.finish()
            except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
                raise SourceError(f"{self.label}: layer {layer.path} is corrupt: {exc}") from exc
        self._check(layer, stream.blob.digest(), stream.blob.count, stream.plain.digest())

    @contextlib.contextmanager
    def layer_in_place(self, layer: Layer) -> Iterator[LayerStream | PlacedLayer]:
        """The layer as a :class:`PlacedLayer` when its blob is an uncompressed tar in a
        file (walked there), else as :meth:`layer` streams it; checked as :meth:`layer` is."""
        region = self._blobs.region(layer.path)
        if not self._plain(layer, region):
            with self.layer(layer) as stream:
                yield stream
            return
        try:
            with PlacedLayer(region, self.label) as placed:
                yield placed
                placed.finish()
        except OSError as exc:
            raise SourceError(f"{self.label}: cannot read layer {layer.path}: {exc}") from exc
        self._check(layer, placed.digest, region.size, placed.digest)

    def _plain(self, layer: Layer, region: Region) -> bool:
        """Whether the blob at ``region`` is an uncompressed tar."""
        if layer.compression != "detect":
            return layer.compression == "none"
        with self._blobs.open(layer.path) as handle:
            return compression_detected(handle.read(len(ZSTD_MAGIC))) == "none"

    def _check(self, layer: Layer, blob: str, size: int, plain: str) -> None:
        if layer.digest is not None and blob != layer.digest:
            raise SourceError(f"{self.label}: layer {layer.path} does not match its digest")
        if layer.size is not None and size != layer.size:
            raise SourceError(f"{self.label}: layer {layer.path} is {size} bytes, not {layer.size}")
        if layer.diff_id is not None and plain != layer.diff_id:
            raise SourceError(
                f"{self.label}: layer {layer.path} does not match its diff_id {layer.diff_id}"
            )


def _split_reference(scheme: str, rest: str) -> tuple[str, str | None]:
    """``PATH[:REF]`` -> (PATH, REF): a PATH that exists as given keeps its colons."""
    if scheme == "docker-archive" or os.path.exists(rest) or ":" not in rest:
        return rest, None
    path, _, reference = rest.rpartition(":")
    return path, reference or None


@contextlib.contextmanager
def open_image(spec: str) -> Iterator[OpenImage]:
    """Open ``scheme:PATH[:REF]``; raises SourceError when it is not a readable image."""
    scheme, _, rest = spec.partition(":")
    if scheme not in SCHEMES:
        raise SourceError(f"unknown image source {spec!r} (use {', '.join(SCHEMES)})")
    path, reference = _split_reference(scheme, rest)
    label = f"{scheme}:{path}"
    if scheme == "oci":
        if not os.path.isdir(path):
            raise SourceError(f"{label}: not a directory")
        blobs: Blobs = DirectoryBlobs(path)
        yield OpenImage(_oci_image(blobs, scheme, reference, label), blobs, label)
        return
    if not os.path.isfile(path):
        raise SourceError(f"{label}: no such file")
    try:
        archive = tarfile.open(path, "r:", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{label}: not a tar archive: {exc}") from exc
    with archive:
        blobs = ArchiveBlobs(archive, path, label)
        if scheme == "oci-archive":
            info = _oci_image(blobs, scheme, reference, label)
        else:
            info = _docker_image(blobs, label)
        yield OpenImage(info, blobs, label)
