"""Pieces of the controller's fault tests: a real controller process and what it exposes.

:class:`Controller` runs ``corral-controller serve`` (the real CLI, its own
session) with its store in ``data`` and everything else — its config, its log,
the local provider's images and instances (whose agents are real
``corral-agent`` processes) — in ``home``, so the store alone can sit on a
small tmpfs. It is killed by PID (SIGKILL, SIGTERM) and started again on the
same files, and read only through what operators and auditors have: the gRPC
API (the ``corral`` client), the health service, the metrics endpoint, the
``corral`` CLI and the files the docs name. Everything waits on conditions
(:func:`wait_until`), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from agent.image.artifact import build_artifact
from agent.manifest.format import Entry, EntryType, Manifest, entry_to_proto
from agent.manifest.policy import Policy
from controller.cli.client import FleetClient
from controller.cli.image_registry import register_bake
from controller.demo import fleet as support
from controller.providers.local import LocalConfig, LocalProvider
from protos.corral.v1 import agent_pb2, fleet_pb2, manifest_pb2
from tests.faults.faults_agent_support import AgentProcess, instance_root
from tests.fixtures.baked import ENTRIES, Baked

REPO = Path(__file__).resolve().parents[2]
STATE = {v: k.removeprefix("INSTANCE_STATE_").lower() for k, v in agent_pb2.InstanceState.items()}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEFAULTS: Mapping[str, object] = {
    "report_interval": 1.0,
    "sweep_interval": 1.0,
    "flush_interval": 0.5,
    "replacer_interval": 0.5,
    "startup_grace": 30.0,
    "backoff_base": 2.0,
}

__all__ = [
    "NOT_SERVING", "SERVING", "STATE", "Controller", "controller_on_small_disk", "corral", "fill",
    "small_disk", "wait_until",
]  # fmt: skip


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log: Callable[[], str] | str = "",
) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` and the tail of ``log`` (read
    when it fails) after ``timeout``."""
    if not support.wait_for(predicate, timeout=timeout, step=0.05):
        text = log() if callable(log) else log
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{text[-4000:]}")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def corral(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``corral`` CLI, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (smaller than the 1000-page WAL, so every commit must grow the log)."""
    mount = tmp_path / "store"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount)],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, capture_output=True)


@pytest.fixture(name="controller")
def controller_on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[Controller]:
    """A started controller whose data dir is :func:`small_disk` (a test module imports both)."""
    made = Controller(tmp_path / "home", data=small_disk)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def fill(disk: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as handle:
        while chunk:
            try:
                handle.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                chunk = chunk[: len(chunk) // 2]
    return filler


class Controller:
    """``corral-controller serve`` with its store in ``data`` and the rest in ``home``."""

    def __init__(
        self,
        home: Path,
        *,
        data: Path | None = None,
        options: Mapping[str, object] = {},
        env: Mapping[str, str] = {},
        local_provider: bool = True,
    ) -> None:
        self.home = home
        self.data = data if data is not None else home / "store"
        home.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = support.free_port()
        self.metrics_port = support.free_port()
        self.env = dict(env)
        settings = {
            "listen": f"127.0.0.1:{self.port}",
            "metrics_listen": f"127.0.0.1:{self.metrics_port}",
            "data_dir": str(self.data),
            **DEFAULTS,
            **options,
        }
        lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
        if local_provider:
            lines += [
                "",
                "[providers.local]",
                f"data_dir = {_toml(str(home))}",
                f"interval = {_toml(settings['report_interval'])}",
            ]
        self.config = home / "controller.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = home / "controller.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = FleetClient(f"127.0.0.1:{self.port}", timeout=5.0)
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.images: dict[str, str] = {}

    # -- the process ---------------------------------------------------------------------

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "controller.cli.serve", "serve", "--config", str(self.config),
            *extra,
        ]  # fmt: skip

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start the process (not waiting for it to serve)."""
        assert self.process is None or self.process.poll() is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(*extra), cwd=REPO, env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self.process

    def start(self, *extra: str, timeout: float = 30) -> None:
        """Start and wait until it answers gRPC calls."""
        process = self.spawn(*extra)
        wait_until(
            lambda: process.poll() is not None or self.up(),
            timeout=timeout, what="the controller to serve", log=self.log,
        )  # fmt: skip
        assert process.poll() is None, f"the controller exited {process.returncode}\n{self.log()}"

    def run_to_exit(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``serve`` expecting it to stop by itself (a refusal); its output and code."""
        return subprocess.run(
            self.command(*extra), cwd=REPO, env={**os.environ, **self.env},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def up(self) -> bool:
        try:
            self.client.call(self.client.stub.ListGroups, fleet_pb2.ListGroupsRequest())
        except Exception:
            return False
        return True

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL (by PID) and reap."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def terminate(self) -> int:
        """SIGTERM (by PID); the exit code."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        """Teardown: the controller, then the agents the local provider started (by PID)."""
        if self.process is not None:
            support.stop_process(self.process)
        support.stop_agents(self.home)
        self.client.close()
        self._channel.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- what it exposes -----------------------------------------------------------------

    def health(self, service: str = "") -> int | None:
        """The health service's status for ``service`` (None: no answer)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError:
            return None
        return int(answer.status)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        """Every sample on the metrics endpoint (None while it does not answer)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3
            ) as response:
                text = response.read().decode()
        except OSError:
            return None
        return {
            (sample.name, frozenset(sample.labels.items())): float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        samples = self.metrics()
        assert samples is not None, "the metrics endpoint does not answer"
        wanted = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``corral ARGS --controller`` this one."""
        return corral(*args, "--controller", f"127.0.0.1:{self.port}")

    # -- the fleet -----------------------------------------------------------------------

    def image(self, version: str) -> str:
        """Build, import into the local provider and register a sample image; its ref."""
        root = self.home / f"root-{version}"
        support.write_sample_root(root, files=5)
        (root / support.APP_CONF).write_text(f"version = {version}\n")
        out = self.home / "images" / version
        result = build_artifact(
            str(root), str(out), name="app", version=version, policy=Policy(),
            owner=(os.getuid(), os.getgid()),
        )  # fmt: skip
        LocalProvider(LocalConfig(data_dir=str(self.home))).import_artifact(str(out))
        register_bake(self.client, out)
        self.images[version] = result.image_ref
        return result.image_ref

    def group(self, name: str, ref: str, *, size: int, mode: str = "enforce") -> None:
        group = fleet_pb2.Group(
            name=name, desired_image_ref=ref, provider="local", desired_size=size,
            mode=fleet_pb2.GROUP_MODE_ENFORCE if mode == "enforce"
            else fleet_pb2.GROUP_MODE_OBSERVE,
        )  # fmt: skip
        self.client.call(self.client.stub.CreateGroup, fleet_pb2.CreateGroupRequest(group=group))

    def instances(self, group: str = "") -> list[fleet_pb2.Instance]:
        request = fleet_pb2.ListInstancesRequest(group=group)
        return self.client.list_all(self.client.stub.ListInstances, request, "instances")

    def states(self, group: str = "") -> dict[str, str]:
        return {i.id: STATE[i.state] for i in self.instances(group)}

    def states_or_none(self, group: str = "") -> dict[str, str] | None:
        try:
            return self.states(group)
        except Exception:  # restarting, or the call refused while faulted
            return None

    def conf(self, instance_id: str) -> Path:
        """The file an instance's drift is made in (under its agent's watched root)."""
        return self.home / "instances" / instance_id / "rootfs" / support.APP_CONF

    @contextlib.contextmanager
    def drifted(self, instance_id: str) -> Iterator[Path]:
        """Change the instance's file; revert it when the block ends."""
        conf = self.conf(instance_id)
        original = conf.read_bytes()
        conf.write_bytes(original + b"patched = true\n")
        try:
            yield conf
        finally:
            conf.write_bytes(original)

    def agent(self, instance_id: str, *, version: str = "1") -> AgentProcess:
        """A ``corral-agent run`` of its own (not launched by a provider) on a copy of the
        image's root, in group ``faults``, reporting here; not started yet."""
        work = self.home / "agents" / instance_id
        work.mkdir(parents=True)
        return AgentProcess(
            controller=f"127.0.0.1:{self.port}",
            root=instance_root(self.home / f"root-{version}", work / "root"),
            image_json=self.home / "images" / version / "image.json",
            data_dir=work / "state",
            instance_id=instance_id,
        )

    def replacement_rows(self) -> list[dict[str, object]]:
        """Every replacement row of the SQLite store (read only)."""
        db = sqlite3.connect(f"file:{self.data / 'corral.db'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in db.execute("SELECT * FROM replacements")]
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def audit_records(self, kind: str) -> list[tuple[int, str, dict[str, object]]]:
        """``(seq, instance_id, data)`` of the audit records of ``kind`` (SQLite, read only)."""
        db = sqlite3.connect(f"file:{self.data / 'corral.db'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT seq, instance_id, data FROM audit_records WHERE kind = ? ORDER BY seq",
                (kind,),
            ).fetchall()
        finally:
            db.close()
        return [(int(seq), str(instance), json.loads(data)) for seq, instance, data in rows]

    def agent_pids(self) -> dict[str, int]:
        """The PIDs of the agents the local provider started, by instance."""
        pids: dict[str, int] = {}
        for name in self.instance_dirs():
            path = self.home / "instances" / name / "instance.json"
            if not name.startswith(".") and path.exists():
                pid = json.loads(path.read_text()).get("pid")
                if isinstance(pid, int):
                    pids[name] = pid
        return pids

    def instance_dirs(self) -> list[str]:
        """Instance directories of the local provider (``.gone-*`` leftovers included)."""
        root = self.home / "instances"
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# -- reports on the wire, for tests that play the agents themselves ---------------------

WIRE = Baked(entries=ENTRIES[:2])
_LIVE = Entry(b"/etc/hostname", EntryType.REGULAR, 0o644, 0, 0, 5, b"\x02" * 32)
_DRIFTED = Manifest.build(Policy(), [WIRE.manifest.entries[0], _LIVE])
"""What a drifted instance's agent scans: the evidence must hash to its root."""


def register_wire_image(controller: Controller, group: str) -> None:
    """Register the wire image and declare ``group`` on it (observe mode: never replaced)."""
    client = controller.client
    client.call(client.stub.RegisterImage, iter(WIRE.register_requests()))
    declared = fleet_pb2.Group(
        name=group, desired_image_ref=WIRE.ref, provider="local",
        mode=fleet_pb2.GROUP_MODE_OBSERVE,
    )  # fmt: skip
    client.call(client.stub.CreateGroup, fleet_pb2.CreateGroupRequest(group=declared))


def wire_header(
    instance_id: str, group: str, seq: int, *, drifted: bool = False, scanned_at_ms: int = 0
) -> agent_pb2.ReportHeader:
    """A report header of an agent on the wire image (its root drifted or not)."""
    return WIRE.header(
        instance_id=instance_id, group=group, seq=seq,
        root=_DRIFTED.root if drifted else WIRE.manifest.root,
        scanned_at_ms=scanned_at_ms or 1_000 + seq,
    )  # fmt: skip


def wire_report(
    instance_id: str, group: str, seq: int, *, scanned_at_ms: int = 0
) -> agent_pb2.ReportRequest:
    """A steady report on the wire image (conformant)."""
    header = wire_header(instance_id, group, seq, scanned_at_ms=scanned_at_ms)
    return agent_pb2.ReportRequest(header=header)


def wire_drift(instance_id: str, group: str, seq: int) -> agent_pb2.ReportDriftRequest:
    """A drift report whose evidence (``/etc/hostname`` modified) hashes to its root."""
    change = manifest_pb2.Change(
        kind=manifest_pb2.CHANGE_KIND_MODIFIED, path=_LIVE.path, entry=entry_to_proto(_LIVE),
        attributes=["content"],
    )  # fmt: skip
    return agent_pb2.ReportDriftRequest(
        header=wire_header(instance_id, group, seq, drifted=True),
        changes=[change],
        total_changes=1,
    )
