"""Shared pieces of the end-to-end tests: a real controller process, a client, agents.

:class:`Fleet` runs ``corral-controller serve`` on a data directory (SQLite,
the demo's short intervals, 127.0.0.1 on free ports), restartable, and reads
the fleet back through the gRPC client and the replacement rows through a
read-only SQLite connection. Extra provider tables (``[providers.docker]``)
can be appended to its config before it starts; with ``server_tls`` it serves
mutual TLS and the client presents ``client_tls``. :class:`AgentProcesses`
runs ``corral-agent run`` processes against it, each on its own copy of a
baked tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from agent.image.artifact import build_artifact
from agent.image.bake import bake
from agent.manifest.policy import Policy
from controller.cli.client import FleetClient
from controller.cli.image_registry import register_bake
from controller.demo import fleet as support
from controller.providers.local import LocalConfig, LocalProvider
from controller.security.tls import TlsFiles
from protos.corral.v1 import agent_pb2, fleet_pb2

STATE = {v: k.removeprefix("INSTANCE_STATE_").lower() for k, v in agent_pb2.InstanceState.items()}


class Fleet:
    """A controller process on a data dir, restartable, with a client and its images."""

    def __init__(
        self,
        data: Path,
        *,
        extra_config: str = "",
        local_config: str = "",
        server_tls: TlsFiles | None = None,
        client_tls: TlsFiles | None = None,
    ) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.port = support.free_port()
        self.config = support.write_config(
            data, grpc_port=self.port, metrics_port=support.free_port(), s=support.DemoSettings()
        )
        if server_tls is not None:  # top-level keys go before the provider tables
            settings = (
                f"tls_ca_file = {json.dumps(server_tls.ca_file)}\n"
                f"tls_cert_file = {json.dumps(server_tls.cert_file)}\n"
                f"tls_key_file = {json.dumps(server_tls.key_file)}\n"
            )
            self.config.write_text(settings + self.config.read_text())
        if local_config:  # more [providers.local] settings
            text = self.config.read_text()
            header = "[providers.local]\n"
            self.config.write_text(text.replace(header, header + local_config.strip() + "\n", 1))
        if extra_config:
            with self.config.open("a") as handle:
                handle.write("\n" + extra_config)
        self.process: subprocess.Popen[bytes] | None = None
        self.client = FleetClient(f"127.0.0.1:{self.port}", timeout=5.0, tls=client_tls)
        self.images: dict[str, str] = {}

    def start(self) -> None:
        self.process = support.start_controller(self.data, self.config)
        ok = support.wait_for(self._up, timeout=20, step=0.1)
        assert ok, (self.data / "controller.log").read_text()[-3000:]

    def _up(self) -> bool:
        try:
            self.client.call(self.client.stub.ListGroups, fleet_pb2.ListGroupsRequest())
        except Exception:
            return False
        return True

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            support.stop_process(self.process)
        support.stop_agents(self.data)
        self.client.close()

    def image(self, version: str) -> str:
        """Build, import (local provider) and register a sample image; returns its ref."""
        root = self.data / f"root-{version}"
        support.write_sample_root(root, files=5)
        (root / support.APP_CONF).write_text(f"version = {version}\n")
        out = self.data / "images" / version
        result = build_artifact(
            str(root), str(out), name="app", version=version, policy=Policy(),
            owner=(os.getuid(), os.getgid()),
        )  # fmt: skip
        LocalProvider(LocalConfig(data_dir=str(self.data))).import_artifact(str(out))
        self.register(out)
        self.images[version] = result.image_ref
        return result.image_ref

    def register(self, bake_dir: Path) -> None:
        """Register a bake output (image.json + manifest.pb) with the controller."""
        register_bake(self.client, bake_dir)

    def group(
        self, name: str, ref: str, *, size: int, mode: str = "enforce", provider: str = "local"
    ) -> None:
        group = fleet_pb2.Group(
            name=name, desired_image_ref=ref, provider=provider, desired_size=size,
            mode=fleet_pb2.GROUP_MODE_ENFORCE if mode == "enforce"
            else fleet_pb2.GROUP_MODE_OBSERVE,
        )  # fmt: skip
        self.client.call(self.client.stub.CreateGroup, fleet_pb2.CreateGroupRequest(group=group))

    def instances(self, group: str) -> list[fleet_pb2.Instance]:
        request = fleet_pb2.ListInstancesRequest(group=group)
        return list(self.client.call(self.client.stub.ListInstances, request).instances)

    def instance(self, instance_id: str) -> fleet_pb2.Instance:
        """One instance with its evidence (lists carry summaries)."""
        request = fleet_pb2.GetInstanceRequest(instance_id=instance_id)
        return self.client.call(self.client.stub.GetInstance, request).instance

    def states(self, group: str) -> dict[str, str]:
        return {i.id: STATE[i.state] for i in self.instances(group)}

    def conformant(self, group: str, count: int, *, digest: str = "") -> bool:
        live = [i for i in self.instances(group) if STATE[i.state] != "retired"]
        good = [i for i in live if STATE[i.state] == "conformant"]
        on_image = all(i.image_digest == digest for i in live) if digest else True
        return len(good) == count == len(live) and on_image

    def drift(self, instance_id: str) -> None:
        conf = self.data / "instances" / instance_id / "rootfs" / support.APP_CONF
        with conf.open("a") as handle:
            handle.write("patched = true\n")

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", *args, "--controller",
             f"127.0.0.1:{self.port}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def rows(self) -> list[tuple[str, str, str]]:
        """``(id, instance_id, phase)`` of every replacement row."""
        db = sqlite3.connect(f"file:{self.data / 'corral.db'}?mode=ro", uri=True)
        try:
            return list(db.execute("SELECT id, instance_id, phase FROM replacements"))
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def instance_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.data / "instances").iterdir() if p.is_dir())


class AgentProcesses:
    """``corral-agent run`` processes, each on its own copy of the baked ``tree``.

    Each instance lives in ``base/<instance_id>``: ``rootfs`` (the copy it
    watches, made at its first start and kept across restarts), ``state`` (its
    data dir) and ``agent.log``. ``options`` are appended to every agent's
    command line (``--interval``, ``--jitter``...).
    """

    def __init__(
        self,
        base: Path,
        *,
        tree: Path,
        bake_dir: Path,
        address: str,
        group: str,
        options: list[str],
    ) -> None:
        self.base = base
        self.tree = tree
        self.bake_dir = bake_dir
        self.address = address
        self.group = group
        self.options = options
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def root(self, instance_id: str) -> Path:
        return self.base / instance_id / "rootfs"

    def log(self, instance_id: str) -> str:
        return (self.base / instance_id / "agent.log").read_text(errors="replace")

    def start(self, instance_id: str) -> None:
        home = self.base / instance_id
        if not self.root(instance_id).exists():
            shutil.copytree(self.tree, self.root(instance_id), symlinks=True)
        argv = [
            sys.executable, "-m", "agent.daemon.cli", "run",
            "--controller", self.address,
            "--root", str(self.root(instance_id)),
            "--instance-id", instance_id,
            "--image-json", str(self.bake_dir / "image.json"),
            "--group", self.group,
            "--deadline", "2",
            "--nice", "0",
            "--data-dir", str(home / "state"),
            *self.options,
        ]  # fmt: skip
        with open(home / "agent.log", "ab") as log:
            self.processes[instance_id] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def stop(self, instance_id: str) -> None:
        support.stop_process(self.processes.pop(instance_id), timeout=5.0)

    def stop_all(self) -> None:
        for instance_id in list(self.processes):
            self.stop(instance_id)


def sample_agents(
    base: Path, fleet: Fleet, *, files: int, group: str, options: list[str]
) -> AgentProcesses:
    """Bake the demo's sample tree (``files`` files) in ``base`` and agents to run copies of it."""
    tree, bake_dir = base / "tree", base / "bake"
    support.write_sample_root(tree, files=files)
    bake(str(tree), str(bake_dir), policy=Policy(), name="app", version="1")
    return AgentProcesses(
        base / "agents",
        tree=tree,
        bake_dir=bake_dir,
        address=f"127.0.0.1:{fleet.port}",
        group=group,
        options=options,
    )
