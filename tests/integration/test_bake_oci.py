"""``corral bake`` of an image artifact equals the bake of the root the engine unpacks.

Real multi-layer images are built with Podman from Containerfiles that delete
files (whiteouts), replace directories (opaque directories), hard-link, chmod
and chown across layers, and name files with non-UTF-8 bytes and paths longer
than a ustar header holds. Each is baked from every artifact form
(``podman save`` oci-archive and docker-archive, skopeo-written OCI layouts
with gzip and zstd layers) and compared with the bake of ``podman image
mount``'s root: same root, same manifest digest, under the default policy and
under one that excludes nothing. ``umoci unpack`` is a second, independent
unpacker; it makes the root directory 0755 (as Docker does), which
``--root-mode`` selects.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent.image.bake import BakeResult, bake
from agent.manifest.policy import Policy
from tests.fixtures.oci_images import INSTALL_APPLETS, BuiltImage, build, run
from tests.fixtures.podman import PodmanEngine, podman_engine

__all__ = ["podman_engine"]

pytestmark = pytest.mark.podman

LONG_DIR = "$(printf 'd%.0s' $(seq 1 120))"
CONTAINERFILES = {
    "corral-oci-whiteouts": f"""{INSTALL_APPLETS}
RUN mkdir -p /opt/d/sub /etc/app && echo 1 > /opt/d/x && echo 2 > /opt/d/sub/y \\
 && echo keep > /etc/keep && echo gone > /etc/gone && ln /etc/keep /etc/hard \\
 && echo a > /etc/app/a && echo b > /etc/app/b
RUN rm /etc/gone && rm -r /opt/d && mkdir /opt/d && echo new > /opt/d/z && rm /etc/app/b
COPY a.txt /etc/a.txt
RUN rm -r /etc/app && mkdir /etc/app && echo c > /etc/app/c && chmod 0700 /etc/app
""",
    "corral-oci-special": f"""{INSTALL_APPLETS}
RUN mkdir -p /opt/app/lib /opt/app/conf /srv/data/a/b/c && echo one > /opt/app/lib/a.so \\
 && echo two > /opt/app/conf/x.conf && chmod 4755 /opt/app/lib/a.so \\
 && chown 1000:2000 /opt/app/conf/x.conf && mkfifo /srv/fifo \\
 && ln -s /opt/app/lib/a.so /srv/abs-link && ln -s ../opt /srv/rel-link && mkdir /srv/empty \\
 && printf x > "/srv/$(printf 'caf\\351')" && mkdir -p "/srv/long/{LONG_DIR}" \\
 && echo deep > "/srv/long/{LONG_DIR}/$(printf 'f%.0s' $(seq 1 90))" \\
 && echo c > /srv/data/a/b/c/file && ln /srv/data/a/b/c/file /srv/data/linked
RUN rm -r /opt/app/lib && mkdir /opt/app/lib && echo new > /opt/app/lib/b.so \\
 && chmod 700 /srv/data && rm -r /srv/data/a/b && ln -s /etc /srv/etc-link && chmod 1777 /srv/empty
COPY conf.txt /opt/app/conf/added.txt
RUN rm /srv/rel-link && mkdir /srv/rel-link && echo in > /srv/rel-link/f && rm /srv/fifo \\
 && mkdir /srv/fifo && chown -R 33:33 /srv/fifo && rm /srv/abs-link && echo f > /srv/abs-link
""",
}
FILES = {"a.txt": b"added\n", "conf.txt": b"conf = 1\n"}
POLICIES = {"default": Policy(), "everything": Policy(exclude=())}


@pytest.fixture(scope="module")
def images(
    podman_engine: PodmanEngine, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BuiltImage]:
    built = {}
    for name, containerfile in CONTAINERFILES.items():
        context = tmp_path_factory.mktemp(name)
        built[name] = build(podman_engine, name, containerfile, context, files=FILES)
    return built


@pytest.fixture(scope="module")
def artifacts(
    images: dict[str, BuiltImage], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], str]:
    """(image, form) -> the source spec ``corral bake`` reads."""
    out: dict[tuple[str, str], str] = {}
    for name, image in images.items():
        work = tmp_path_factory.mktemp(f"{name}-artifacts")
        out[name, "oci-archive"] = f"oci-archive:{image.save(work / 'oci.tar', oci=True)}"
        out[name, "docker-archive"] = f"docker-archive:{image.save(work / 'docker.tar', oci=False)}"
        out[name, "oci-gzip"] = f"oci:{image.layout(work / 'layout', reference='gz')}:gz"
        out[name, "oci-zstd"] = (
            f"oci:{image.layout(work / 'layout', reference='zst', zstd=True)}:zst"
        )
    return out


@pytest.fixture(scope="module")
def baselines(
    images: dict[str, BuiltImage], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], BakeResult]:
    """(image, policy) -> the bake of the root ``podman image mount`` shows."""
    out = {}
    for name, image in images.items():
        with image.mounted() as root:
            for label, policy in POLICIES.items():
                out[name, label] = bake(
                    root,
                    str(tmp_path_factory.mktemp("mounted")),
                    policy=policy,
                    name="x",
                    version="1",
                )
    return out


def _differences(expected: BakeResult, actual: BakeResult) -> list[str]:
    want = {entry.path: entry for entry in expected.manifest.entries}
    got = {entry.path: entry for entry in actual.manifest.entries}
    return [
        f"{path!r}: {want.get(path)} != {got.get(path)}"
        for path in sorted(want.keys() | got.keys())
        if want.get(path) != got.get(path)
    ]


@pytest.mark.parametrize("form", ["oci-archive", "docker-archive", "oci-gzip", "oci-zstd"])
@pytest.mark.parametrize("name", sorted(CONTAINERFILES))
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_artifact_bakes_to_the_mounted_root(
    name: str,
    form: str,
    policy: str,
    artifacts: dict[tuple[str, str], str],
    baselines: dict[tuple[str, str], BakeResult],
    tmp_path: Path,
) -> None:
    expected = baselines[name, policy]
    actual = bake(
        artifacts[name, form], str(tmp_path), policy=POLICIES[policy], name="x", version="1"
    )
    assert _differences(expected, actual) == []
    assert actual.manifest.root == expected.manifest.root
    assert actual.manifest_digest == expected.manifest_digest
    assert (tmp_path / "manifest.pb").read_bytes() == Path(expected.manifest_path).read_bytes()


def test_the_images_exercise_whiteouts_and_opaque_directories(
    artifacts: dict[tuple[str, str], str],
) -> None:
    """The equality above means something: the layers hold the cases it is about."""
    names: list[str] = []
    links = 0
    for name in CONTAINERFILES:
        path = artifacts[name, "docker-archive"].removeprefix("docker-archive:")
        with tarfile.open(path) as outer:
            listing = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            for layer in listing[0]["Layers"]:
                with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                    members = inner.getmembers()
                names += [member.name for member in members]
                links += sum(member.islnk() for member in members)
    assert any(n.endswith("/.wh..wh..opq") for n in names)
    assert any("/.wh." in n and not n.endswith(".wh..opq") for n in names)
    assert any(len(n) > 100 for n in names)
    assert links >= 2


def test_image_json_names_the_oci_manifest_and_config_digests(
    images: dict[str, BuiltImage], artifacts: dict[tuple[str, str], str], tmp_path: Path
) -> None:
    name = "corral-oci-whiteouts"
    archive = artifacts[name, "oci-archive"].removeprefix("oci-archive:")
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
    [descriptor] = index["manifests"]
    result = bake(artifacts[name, "oci-archive"], str(tmp_path / "oci"), policy=Policy())
    document = json.loads((tmp_path / "oci" / "image.json").read_text())
    assert document == result.image
    assert document["oci_manifest_digest"] == descriptor["digest"]
    assert document["image_digest"] == descriptor["digest"]
    assert document["image_ref"] == f"localhost/{name}@{descriptor['digest']}"
    assert document["name"] == name and document["version"] == "1"
    assert document["config_digest"] == images[name].image_id
    assert document["manifest_digest"] == result.manifest_digest != descriptor["digest"]
    assert document["source"] == "oci-archive" and document["layer_count"] == 6

    docker = bake(artifacts[name, "docker-archive"], str(tmp_path / "docker"), policy=Policy())
    assert docker.image["oci_manifest_digest"] is None
    assert docker.image["image_digest"] == docker.image["config_digest"] == images[name].image_id


def test_umoci_unpack_agrees_with_the_docker_root_mode(
    artifacts: dict[tuple[str, str], str], tmp_path: Path
) -> None:
    name = "corral-oci-special"
    source = artifacts[name, "oci-gzip"]
    layout = source.removeprefix("oci:").rsplit(":", 1)[0]
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--image", f"{layout}:gz", str(bundle)])
    unpacked = bake(str(bundle / "rootfs"), str(tmp_path / "a"), policy=POLICIES["everything"])
    baked = bake(source, str(tmp_path / "b"), policy=POLICIES["everything"], root_mode=0o755)
    assert _differences(unpacked, baked) == []
    assert baked.manifest_digest == unpacked.manifest_digest


def test_cli_bakes_an_archive(artifacts: dict[tuple[str, str], str], tmp_path: Path) -> None:
    source = artifacts["corral-oci-whiteouts", "oci-archive"]
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "bake", source, "--out", str(tmp_path),
         "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["image_ref"].startswith("localhost/corral-oci-whiteouts@sha256:")
    assert document == {**json.loads((tmp_path / "image.json").read_text()), "warnings": []}
