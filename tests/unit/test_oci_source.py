"""Image sources: layouts and archives found, layers streamed and checked against digests."""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from agent.errors import AgentError
from agent.image.bake import bake
from agent.image.oci.blobs import SourceError
from agent.image.oci.source import (
    compression_of,
    is_image_source,
    open_image,
)
from agent.image.secrets import SecretsFoundError
from agent.manifest.policy import Policy
from controller.cli.main import main

LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


class Layout:
    """A hand-made OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.manifests: list[dict[str, Any]] = []

    def blob(self, data: bytes) -> str:
        value = digest(data)
        (self.root / "blobs" / "sha256" / value.removeprefix("sha256:")).write_bytes(data)
        return value

    def image(self, layers: list[tuple[bytes, str]], *, ref: str | None = None) -> str:
        config = json.dumps(
            {"rootfs": {"type": "layers", "diff_ids": [digest(tar) for tar, _ in layers]}}
        ).encode()
        descriptors = []
        for tar, how in layers:
            blob = compress(tar, how)
            descriptors.append(
                {"mediaType": LAYER_TYPES[how], "digest": self.blob(blob), "size": len(blob)}
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": self.blob(config),
                    "size": len(config),
                },
                "layers": descriptors,
            }
        ).encode()
        descriptor: dict[str, Any] = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.blob(manifest),
            "size": len(manifest),
        }
        if ref is not None:
            descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref}
        self.manifests.append(descriptor)
        self.write_index()
        return str(descriptor["digest"])

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "manifests": self.manifests}
        (self.root / "index.json").write_text(json.dumps(index))


def opening(spec: str) -> None:
    with open_image(spec):
        pass


def read_layers(spec: str) -> list[bytes]:
    out = []
    with open_image(spec) as image:
        for layer in image.info.layers:
            with image.layer(layer) as stream:
                out.append(stream.read())
    return out


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_layout_layers_stream_by_media_type(tmp_path: Path, how: str) -> None:
    layout = Layout(tmp_path / "layout")
    tar = layer_tar("etc/hosts", b"127.0.0.1 localhost\n")
    manifest = layout.image([(tar, how)], ref="v1")
    with open_image(f"oci:{layout.root}") as image:
        assert image.info.manifest_digest == manifest
        assert image.info.ref_name == "v1"
    assert read_layers(f"oci:{layout.root}:v1") == [tar]


def test_a_reference_picks_one_of_several_images(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    first = layout.image([(layer_tar("a", b"a"), "gzip")], ref="one")
    second = layout.image([(layer_tar("b", b"b"), "gzip")], ref="two")
    with open_image(f"oci:{layout.root}:two") as image:
        assert image.info.manifest_digest == second != first
    with (
        pytest.raises(SourceError, match="holds 2 images; name one"),
        open_image(f"oci:{layout.root}"),
    ):
        pass
    with pytest.raises(SourceError, match="no image named 'three'"):
        opening(f"oci:{layout.root}:three")


def test_an_index_resolves_to_this_machine(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    manifest = layout.image([(layer_tar("a", b"a"), "none")])
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {**layout.manifests[0], "platform": {"os": "linux", "architecture": "s390x"}},
                {**layout.manifests[0], "platform": {"os": "linux", "architecture": arch}},
            ],
        }
    ).encode()
    layout.manifests = [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": layout.blob(index),
         "size": len(index)}
    ]  # fmt: skip
    layout.write_index()
    with open_image(f"oci:{layout.root}") as image:
        assert image.info.manifest_digest == manifest


def test_a_corrupt_layer_fails_its_digest(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([(layer_tar("a", b"a"), "none")])
    [blob] = [p for p in (layout.root / "blobs" / "sha256").iterdir() if p.stat().st_size >= 1024]
    data = bytearray(blob.read_bytes())
    data[600] ^= 1  # inside the member's content: the tar still parses
    blob.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="does not match its digest"):
        read_layers(f"oci:{layout.root}")


def test_a_tampered_manifest_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    manifest = layout.image([(layer_tar("a", b"a"), "none")])
    path = layout.root / "blobs" / "sha256" / manifest.removeprefix("sha256:")
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2'))
    with (
        pytest.raises(SourceError, match="does not match its digest"),
        open_image(f"oci:{layout.root}"),
    ):
        pass


def test_archive_of_a_layout_reads_in_place(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    tar = layer_tar("a", b"in an archive")
    manifest = layout.image([(tar, "gzip")])
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as out:
        out.add(layout.root, arcname=".")
    with open_image(f"oci-archive:{archive}") as image:
        assert image.info.manifest_digest == manifest
        assert image.info.scheme == "oci-archive"
    assert read_layers(f"oci-archive:{archive}") == [tar]


def docker_archive(path: Path, layers: list[bytes], images: int = 1) -> str:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [digest(t) for t in layers]}})
    with tarfile.open(path, "w") as out:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))

        add("config.json", config.encode())
        names = []
        for number, tar in enumerate(layers):
            names.append(f"{number}/layer.tar")
            add(names[-1], gzip.compress(tar) if number % 2 else tar)
        entry = {"Config": "config.json", "RepoTags": ["localhost/app:2"], "Layers": names}
        add("manifest.json", json.dumps([entry] * images).encode())
    return digest(config.encode())


def test_docker_archive_layers_are_sniffed_and_checked_against_diff_ids(tmp_path: Path) -> None:
    layers = [layer_tar("a", b"plain"), layer_tar("b", b"gzipped")]
    config = docker_archive(tmp_path / "d.tar", layers)
    with open_image(f"docker-archive:{tmp_path / 'd.tar'}") as image:
        assert image.info.manifest_digest is None
        assert image.info.config_digest == config
        assert image.info.ref_name == "localhost/app:2"
    assert read_layers(f"docker-archive:{tmp_path / 'd.tar'}") == layers
    docker_archive(tmp_path / "two.tar", layers, images=2)
    with pytest.raises(SourceError, match="exactly one image"):
        opening(f"docker-archive:{tmp_path / 'two.tar'}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("oci:/nonexistent", "not a directory"),
        ("oci-archive:/nonexistent.tar", "no such file"),
        ("zip:/x", "unknown image source"),
    ],
)
def test_missing_sources_fail_clearly(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        opening(spec)


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no index\.json"):
        opening(f"oci:{tmp_path}")
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SourceError, match="not a tar archive"):
        opening(f"oci-archive:{tmp_path / 'x.tar'}")


def test_media_types_and_source_names() -> None:
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") == "zstd"
    with pytest.raises(SourceError, match="unsupported layer media type"):
        compression_of("application/vnd.oci.image.layer.v1.tar+bzip2")
    assert is_image_source("oci-archive:/x.tar") and is_image_source("oci:dir:tag")
    assert not is_image_source("/srv/root") and not is_image_source("C:/x")


def secret_layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n-----END OPENSSH PRIVATE KEY-----\n"


def test_bake_of_a_layout_names_it_and_warns_of_secrets(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layers = [
        (secret_layer({"root/.ssh/id_ed25519": KEY, "etc/gone.pem": KEY}), "gzip"),
        (secret_layer({"etc/.wh.gone.pem": b""}), "zstd"),
    ]
    manifest = layout.image(layers, ref="registry.example/team/app:2.1")
    result = bake(f"oci:{layout.root}", str(tmp_path / "out"), policy=Policy())
    assert result.image["name"] == "app" and result.image["version"] == "2.1"
    assert result.image["image_ref"] == f"registry.example/team/app@{manifest}"
    assert [w.path for w in result.warnings] == [b"/root/.ssh/id_ed25519"]
    with pytest.raises(SecretsFoundError):
        bake(f"oci:{layout.root}", str(tmp_path / "strict"), policy=Policy(), strict=True)
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_bake_leaves_the_cycle_collector_as_it_found_it(tmp_path: Path, enabled: bool) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([(secret_layer({"etc/app.conf": b"x"}), "gzip")], ref="app:1")
    broken = Layout(tmp_path / "broken")
    broken.image([(b"not a tar" * 100, "none")], ref="app:1")
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        bake(f"oci:{layout.root}", str(tmp_path / "out"), policy=Policy())
        assert gc.isenabled() is enabled
        with pytest.raises(AgentError):
            bake(f"oci:{broken.root}", str(tmp_path / "out"), policy=Policy())
        assert gc.isenabled() is enabled  # a failed bake too
    finally:
        (gc.enable if was else gc.disable)()


def test_cli_refuses_an_unsafe_archive_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([(secret_layer({"../../etc/cron.d/x": b"evil"}), "none")])
    code = main(["bake", f"oci:{layout.root}", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1
    assert "unsafe member name" in error[0] and "layer 1" in error[0]
    assert not (tmp_path / "out").exists()


def many_files(count: int, prefix: str = "f") -> bytes:
    return secret_layer({f"{prefix}/{i}": b"%d" % i * (i % 40) for i in range(count)})


def test_layers_bake_alike_walked_in_place_or_streamed(tmp_path: Path) -> None:
    """Uncompressed layers in a layout, in an oci-archive or a docker archive are walked in
    place; compressed ones stream: the manifest is the same."""
    tars = [many_files(1500), secret_layer({"f/7": b"changed", "f/.wh.8": b""}), many_files(3, "g")]
    digests = set()
    for how in ("none", "gzip", "zstd"):
        layout = Layout(tmp_path / how)
        layout.image([(tar, how) for tar in tars], ref="app:1")
        digests.add(bake(f"oci:{layout.root}", str(tmp_path / f"out-{how}"),
                         policy=Policy()).manifest_digest)  # fmt: skip
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as out:
        out.add(tmp_path / "none", arcname=".")
    digests.add(
        bake(f"oci-archive:{archive}", str(tmp_path / "a"), policy=Policy()).manifest_digest
    )
    docker_archive(tmp_path / "d.tar", tars)  # plain and gzip layers, by their first bytes
    spec = f"docker-archive:{tmp_path / 'd.tar'}"
    digests.add(bake(spec, str(tmp_path / "d"), policy=Policy(), name="app").manifest_digest)
    assert len(digests) == 1


@pytest.mark.parametrize(
    ("part", "message"),
    [("content", "does not match its digest"), ("header", "checksum does not match")],
)
def test_a_corrupt_layer_fails_the_bake_walked_in_place(
    tmp_path: Path, part: str, message: str
) -> None:
    layout = Layout(tmp_path / "layout")
    tar = many_files(1500)
    layout.image([(tar, "none")], ref="app:1")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        member = archive.getmember("f/1234")
    at = member.offset_data if part == "content" else member.offset + 10
    blob = layout.root / "blobs" / "sha256" / digest(tar).removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[at] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(AgentError, match=message):
        bake(f"oci:{layout.root}", str(tmp_path / "out"), policy=Policy())
    assert not (tmp_path / "out").exists()


def test_a_layer_changed_during_the_bake_fails_it(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "layout")
    layout.image([(many_files(3000), "none")], ref="app:1")
    [blob] = [p for p in (layout.root / "blobs" / "sha256").iterdir() if p.stat().st_size >= 1024]

    def rewrite(members: int, hashed: int) -> None:  # the same bytes: only its times change
        blob.write_bytes(blob.read_bytes())

    with pytest.raises(AgentError, match="changed while it was read"):
        bake(f"oci:{layout.root}", str(tmp_path / "out"), policy=Policy(), progress=rewrite)
    assert not (tmp_path / "out").exists()


def test_a_layout_whose_blobs_are_symlinks_bakes_as_one_whose_blobs_are_files(
    tmp_path: Path,
) -> None:
    """Blobs kept elsewhere and linked into the layout (a shared store): the walk in
    place follows the link as reading the blob does."""
    tars = [many_files(1500), secret_layer({"f/7": b"changed"})]
    layout = Layout(tmp_path / "layout")
    layout.image([(tar, "none") for tar in tars], ref="app:1")
    plain = bake(f"oci:{layout.root}", str(tmp_path / "plain"), policy=Policy())
    store = tmp_path / "store"
    store.mkdir()
    for blob in (layout.root / "blobs" / "sha256").iterdir():
        blob.rename(store / blob.name)
        blob.symlink_to(store / blob.name)
    linked = bake(f"oci:{layout.root}", str(tmp_path / "linked"), policy=Policy())
    assert linked.manifest_digest == plain.manifest_digest
