"""The local provider beyond the contract: agents, PIDs, directories, crash recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.image.artifact import build_artifact
from agent.manifest.policy import Policy
from agent.scan.scanner import scan
from controller.demo.fleet import wait_for
from controller.providers import LaunchSpec, PermanentProviderError
from controller.providers.local import LocalConfig, LocalProvider
from tests.fixtures.stand_in_agent import IDLE_AGENT


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    made = LocalProvider(LocalConfig(data_dir=str(tmp_path / "data"), agent_prefix=IDLE_AGENT))
    yield made
    for instance in made.list("web"):
        made.terminate(instance.instance_id)


@pytest.fixture
def image(tmp_path: Path, provider: LocalProvider) -> tuple[str, str, bytes]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("port = 8080\n")
    owner = (os.geteuid(), os.getegid())
    build = build_artifact(
        root, tmp_path / "out", name="web", version="1", policy=Policy(), owner=owner
    )
    provider.import_artifact(str(tmp_path / "out"))
    return build.image_ref, build.image_digest, build.manifest.root


def spec(image: tuple[str, str, bytes], instance_id: str, key: str) -> LaunchSpec:
    return LaunchSpec(
        group="web",
        image_ref=image[0],
        image_digest=image[1],
        instance_id=instance_id,
        idempotency_key=key,
        controller="127.0.0.1:7000",
    )


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_instance_is_the_unpacked_image_watched_by_an_agent(
    provider: LocalProvider, image: tuple[str, str, bytes], tmp_path: Path
) -> None:
    launched = provider.launch(spec(image, "i-1", "k-1"))
    assert launched.root_path is not None
    assert scan(launched.root_path, Policy(), workers=0).root == image[2]
    argv = _cmdline(int(launched.provider_id))
    instance_dir = tmp_path / "data" / "instances" / "i-1"
    assert argv[argv.index("--root") + 1] == str(instance_dir / "rootfs")
    assert argv[argv.index("--instance-id") + 1] == "i-1"
    assert argv[argv.index("--group") + 1] == "web"
    assert argv[argv.index("--controller") + 1] == "127.0.0.1:7000"
    assert argv[argv.index("--data-dir") + 1] == str(instance_dir / "state")
    image_json = Path(argv[argv.index("--image-json") + 1])
    assert json.loads(image_json.read_text())["image_digest"] == image[1]
    assert (image_json.parent / "manifest.pb").is_file()
    assert os.getpgid(int(launched.provider_id)) == int(launched.provider_id)  # detached
    record = json.loads((instance_dir / "instance.json").read_text())
    assert record["pid"] == int(launched.provider_id)
    assert record["idempotency_key"] == "k-1"


def test_terminate_stops_the_agent_and_removes_the_directory(
    provider: LocalProvider, image: tuple[str, str, bytes], tmp_path: Path
) -> None:
    launched = provider.launch(spec(image, "i-1", "k-1"))
    pid = int(launched.provider_id)
    provider.terminate("i-1")
    assert not (tmp_path / "data" / "instances" / "i-1").exists()
    assert not [p for p in os.listdir(tmp_path / "data" / "instances") if p.startswith(".gone")]
    assert not Path(f"/proc/{pid}").exists() or "i-1" not in " ".join(_cmdline(pid))


def test_a_recycled_pid_is_never_killed(
    provider: LocalProvider, image: tuple[str, str, bytes], tmp_path: Path
) -> None:
    provider.launch(spec(image, "i-1", "k-1"))
    record_path = tmp_path / "data" / "instances" / "i-1" / "instance.json"
    record = json.loads(record_path.read_text())
    os.kill(record["pid"], 15)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record["pid"] = bystander.pid  # as if the kernel had reused the agent's PID
        record_path.write_text(json.dumps(record))
        described = provider.describe("i-1")
        assert described is not None
        assert described.state == "stopped"
        provider.terminate("i-1")
        time.sleep(0.05)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_retried_launch_after_a_crash_restarts_the_agent_once(
    provider: LocalProvider, image: tuple[str, str, bytes], tmp_path: Path
) -> None:
    first = provider.launch(spec(image, "i-1", "k-1"))
    record_path = tmp_path / "data" / "instances" / "i-1" / "instance.json"
    record = json.loads(record_path.read_text())
    record["pid"] = None  # crashed after starting the agent, before recording its PID
    record_path.write_text(json.dumps(record))
    again = provider.launch(spec(image, "i-1", "k-1"))
    assert again.provider_id == first.provider_id  # found by its command line, not restarted
    os.kill(int(first.provider_id), 9)
    assert wait_for(lambda: _dead(int(first.provider_id)), timeout=10)
    third = provider.launch(spec(image, "i-1", "k-1"))
    assert third.state == "running" and third.provider_id != first.provider_id
    provider.terminate("i-1")


def test_a_launch_killed_mid_unpack_leaves_nothing_after_the_retry(
    provider: LocalProvider, image: tuple[str, str, bytes], tmp_path: Path
) -> None:
    instances = tmp_path / "data" / "instances"
    half_done = instances / ".new-i-1-0123456789abcdef"
    (half_done / "rootfs" / "etc").mkdir(parents=True)  # the controller died while unpacking
    (instances / ".new-i-2-0123456789abcdef").mkdir()  # another instance's: not touched
    provider.launch(spec(image, "i-1", "k-1"))
    names = sorted(p.name for p in instances.iterdir() if p.name != ".lock")
    assert names == [".new-i-2-0123456789abcdef", "i-1"]
    provider.terminate("i-1")


def test_unknown_image_and_taken_ids_are_refused(
    provider: LocalProvider, image: tuple[str, str, bytes]
) -> None:
    missing = ("web@sha256:" + "0" * 64, "sha256:" + "0" * 64, b"")
    with pytest.raises(PermanentProviderError, match="not in the local artifact store"):
        provider.launch(spec(missing, "i-2", "k-2"))
    provider.launch(spec(image, "i-1", "k-1"))
    with pytest.raises(PermanentProviderError, match="already used"):
        provider.launch(spec(image, "i-1", "another-key"))
    with pytest.raises(PermanentProviderError, match="cannot name a directory"):
        provider.launch(spec(image, "../escape", "k-3"))
    provider.terminate("i-1")


def test_import_checks_the_artifact_digest(tmp_path: Path, provider: LocalProvider) -> None:
    root = tmp_path / "r"
    root.mkdir()
    build_artifact(root, tmp_path / "b", name="web", version="1", policy=Policy())
    with open(tmp_path / "b" / "image.tar", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(PermanentProviderError, match=r"image\.json says"):
        provider.import_artifact(str(tmp_path / "b"))


def _dead(pid: int) -> bool:
    """``pid`` has exited (gone, or a zombie nobody has reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
