"""A real controller in-process: gRPC on 127.0.0.1 port 0, SQLite in tmp, a fake clock.

The server runs on its own event loop in a thread, so tests (and the ``corral``
CLI's synchronous client) talk to it exactly as agents and operators do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from agent.manifest import Entry, EntryType, Manifest, digest_of
from agent.policy import Policy
from controller.app import Controller, start_controller
from controller.config import ControllerConfig
from controller.testing import FakeClock
from protos.corral.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc

ENTRIES = [
    Entry(b"/etc", EntryType.DIRECTORY, 0o755, 0, 0),
    Entry(b"/etc/hostname", EntryType.REGULAR, 0o644, 0, 0, 4, b"\x01" * 32),
    Entry(b"/etc/passwd", EntryType.REGULAR, 0o644, 0, 0, 9, b"\x02" * 32),
]


class Baked:
    """A baked image: its manifest bytes and the Image message registering it."""

    def __init__(self, name: str = "web", entries: list[Entry] | None = None) -> None:
        self.manifest = Manifest.build(Policy(), entries or ENTRIES)
        self.encoded = self.manifest.encode()
        self.digest = digest_of(self.encoded)
        self.ref = f"{name}@{self.digest}"
        self.image = fleet_pb2.Image(
            name=name,
            version="1",
            ref=self.ref,
            digest=self.digest,
            manifest_digest=self.digest,
            root=self.manifest.root,
            entry_count=len(self.manifest.entries),
            byte_count=self.manifest.byte_count,
        )


class RunningController:
    """Start/stop a controller on a private loop; restartable on the same data dir."""

    def __init__(self, data_dir: Path, clock: FakeClock, **config: Any) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.config_overrides = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.controller: Controller | None = None
        self.registry = CollectorRegistry()
        self.channel: grpc.Channel | None = None

    def start(self) -> None:
        self.registry = CollectorRegistry()
        config = ControllerConfig(
            listen="127.0.0.1:0",
            data_dir=str(self.data_dir),
            **self.config_overrides,
        )
        self.controller = self._run(
            start_controller(config, clock=self.clock, registry=self.registry, sweeps=False)
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.controller.port}")
        self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.controller is not None:
            self._run(self.controller.stop(grace=0))
            self.controller = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def on_loop(self, function: Any, *args: Any) -> Any:
        """Run a plain function on the server's loop (as the scheduler would)."""

        async def call() -> Any:
            return function(*args)

        return self._run(call())

    @property
    def address(self) -> str:
        assert self.controller is not None
        return f"127.0.0.1:{self.controller.port}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    # Helpers the tests share -------------------------------------------------

    def register(self, baked: Baked) -> fleet_pb2.RegisterImageResponse:
        request = fleet_pb2.RegisterImageRequest(image=baked.image, manifest_chunk=baked.encoded)
        return self.fleet.RegisterImage(iter([request]), timeout=5)

    def create_group(self, name: str, baked: Baked) -> fleet_pb2.CreateGroupResponse:
        group = fleet_pb2.Group(name=name, desired_image_ref=baked.ref)
        return self.fleet.CreateGroup(fleet_pb2.CreateGroupRequest(group=group), timeout=5)

    def report(self, header: agent_pb2.ReportHeader) -> agent_pb2.ReportResponse:
        return self.agent.Report(agent_pb2.ReportRequest(header=header), timeout=5)


def header(baked: Baked, **fields: Any) -> agent_pb2.ReportHeader:
    values: dict[str, Any] = {
        "instance_id": "i-1",
        "group": "web",
        "image_ref": baked.ref,
        "image_digest": baked.digest,
        "root": baked.manifest.root,
        "seq": 1,
        "boot_id": "boot-1",
        "scanned_at_ms": 1_000,
        "agent_version": "0.1.0",
    }
    values.update(fields)
    return agent_pb2.ReportHeader(**values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def running(tmp_path: Path, clock: FakeClock) -> Iterator[RunningController]:
    controller = RunningController(tmp_path / "data", clock, max_message_bytes=256 * 1024)
    controller.start()
    yield controller
    controller.close()


@pytest.fixture
def baked() -> Baked:
    return Baked()


@pytest.fixture
def web(running: RunningController, baked: Baked) -> Baked:
    """The image registered and group ``web`` declared with it."""
    running.register(baked)
    running.create_group("web", baked)
    return baked
