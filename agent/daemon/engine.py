"""Ask a container engine where a container's filesystem lives (Docker Engine API, no SDK).

The agent only needs ``GET /containers/{id}/json``: the storage driver and its
``GraphDriver.Data`` (``MergedDir``, the container's root as the host sees
it, and, for overlay, ``UpperDir``, where every change the container makes
lands). Docker and Podman (``podman system service``) both answer it on a
Unix socket, so this is a few lines of :mod:`http.client` rather than a
dependency.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from agent.errors import AgentError

_MAX_BODY = 4 << 20


class EngineError(AgentError):
    """The engine cannot be reached, or does not know the container."""


@dataclass(frozen=True)
class ContainerStorage:
    """Where a container's files are, as its engine reports them."""

    container_id: str
    driver: str
    merged_dir: str | None
    """The container's root filesystem on the host (None: the engine gives none)."""
    upper_dir: str | None
    """The overlay upper directory (None: not overlay, or not reported)."""
    running: bool


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path(engine: str) -> str:
    """The socket path of ``unix:///path``; EngineError for any other form."""
    if not engine.startswith("unix://") or len(engine) <= len("unix://"):
        raise EngineError(f"engine {engine!r} is not a unix:///path socket URL")
    return engine[len("unix://") :]


def _get(engine: str, path: str, timeout: float) -> Any:
    connection = _UnixConnection(socket_path(engine), timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(_MAX_BODY + 1)
    except OSError as exc:
        raise EngineError(f"cannot reach the engine at {engine}: {exc}") from exc
    finally:
        connection.close()
    if response.status == 404:
        raise EngineError(f"the engine at {engine} has no {path}")
    if response.status != 200:
        text = body[:200].decode("utf-8", "replace").strip()
        raise EngineError(f"the engine at {engine} answered {response.status} to {path}: {text}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise EngineError(f"the engine at {engine} answered {path} with bad JSON") from exc


def inspect_container(engine: str, container: str, *, timeout: float = 10.0) -> ContainerStorage:
    """The storage of ``container`` (id or name) on ``engine`` (``unix:///...``)."""
    document = _get(engine, f"/containers/{quote(container, safe='')}/json", timeout)
    if not isinstance(document, dict):
        raise EngineError(f"the engine described container {container} oddly")
    driver = document.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    state = document.get("State") or {}
    return ContainerStorage(
        container_id=str(document.get("Id", container)),
        driver=str(driver.get("Name", "")),
        merged_dir=data.get("MergedDir") or None,
        upper_dir=data.get("UpperDir") or None,
        running=bool(state.get("Running")),
    )
