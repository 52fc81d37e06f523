"""The docker provider: containers through the Docker Engine API (Docker or Podman).

An instance is a container created from the group's image *by digest*
(``repo@sha256:...``, the OCI manifest digest ``corral bake`` records; an image
baked from a docker archive, which has no manifest, is created from its image
ID, the config digest; resolved locally: corral never pulls a tag) and labelled
``io.corral.group``, ``io.corral.instance``, ``io.corral.idempotency-key`` and
``io.corral.image-digest``, so a retried launch finds the container it already
created, and ``list`` is a label filter. Terminate is ``remove(force=True)``.

The agent watches the container's root from the host. When ``agent_prefix`` is
set, the provider starts one host agent per container with ``--root`` at the
container's merged root filesystem (``GraphDriver.Data.MergedDir``, present
for the overlay driver on a rootful engine), exactly as the local provider
does, and stops it on terminate. When the engine is a local socket, the agent
also gets ``--container ID --engine unix:///...``: it then checks the
container's overlay upper directory each interval and scans the merged root
every ``full_scan_interval`` seconds (see :mod:`agent.daemon.container`); its PID is kept in
``DATA_DIR/<instance>.json``, and it reads the image's baked identity from
``ARTIFACTS_DIR/sha256-<hex>/image.json``. With ``agent_certificates`` each
host agent gets its own certificate in ``DATA_DIR/<instance>/tls`` (removed
on terminate). Without it, run the agent some other way (a
sidecar with the container's root mounted read-only, or a host service).

Only this module imports the ``docker`` SDK; its errors are mapped here:
connection failures and 5xx answers are temporary, the rest permanent.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions

from controller.providers.agentcerts import AgentCertificates, discard
from controller.providers.agentproc import AgentCommand, AgentProcesses
from controller.providers.base import (
    LABEL_GROUP,
    LABEL_IDEMPOTENCY_KEY,
    LABEL_IMAGE_DIGEST,
    LABEL_INSTANCE,
    InstanceState,
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
)
from controller.providers.errors import PermanentProviderError, TemporaryProviderError

_STATES = {
    "created": InstanceState.PENDING,
    "restarting": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "paused": InstanceState.RUNNING,
}


@dataclass(frozen=True)
class DockerConfig:
    """How to reach the engine and what to run in each container."""

    base_url: str | None = None
    """``unix:///run/docker.sock``, ``tcp://...``; None reads DOCKER_HOST like the docker CLI."""
    command: tuple[str, ...] = ()
    """The container's command; empty keeps the image's own."""
    timeout: float = 60.0
    retry_delay: float = 10.0
    agent_prefix: tuple[str, ...] = ()
    """Start a host agent per container with this argv prefix (empty: no host agent)."""
    agent_interval: float = 1.0
    data_dir: str | None = None
    """Where host agents' PIDs and state live (required with ``agent_prefix``)."""
    artifacts_dir: str | None = None
    """Baked images for host agents: ``sha256-<hex>/image.json`` + ``manifest.pb`` per digest."""
    agent_certificates: AgentCertificates | None = None
    """Issue each host agent a certificate for its instance (the controller requires mTLS)."""
    agent_full_scan_interval: float = 3600.0
    """Host agents check the container's overlay upper directory every ``agent_interval``
    and scan its whole merged root every this many seconds."""

    def engine_socket(self) -> str | None:
        """The engine's ``unix://`` URL as host agents reach it (None: not a local socket)."""
        url = self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return url if url.startswith("unix:///") else None


class DockerProvider(Provider):
    """Containers as instances; see the module docstring."""

    name = "docker"
    replacement_strategy = ReplacementStrategy.SURGE

    def __init__(self, config: DockerConfig, *, client: Any | None = None) -> None:
        if config.agent_prefix and not config.data_dir:
            raise PermanentProviderError("docker provider: agent_prefix needs a data_dir")
        self._config = config
        self._client = client or self._connect(config)
        self._agents = AgentProcesses()
        self._agent = AgentCommand(prefix=config.agent_prefix, interval=config.agent_interval)

    @staticmethod
    def _connect(config: DockerConfig) -> Any:
        try:
            if config.base_url is None:
                return docker.from_env(timeout=int(config.timeout))
            return docker.DockerClient(base_url=config.base_url, timeout=int(config.timeout))
        except docker.errors.DockerException as exc:
            raise TemporaryProviderError(
                f"docker provider: cannot reach the engine: {exc}",
                delay=config.retry_delay,
                reason="docker_unreachable",
            ) from exc

    def _error(self, action: str, exc: Exception) -> Exception:
        if isinstance(exc, requests.exceptions.RequestException) or (
            isinstance(exc, docker.errors.APIError) and exc.is_server_error()
        ):
            return TemporaryProviderError(
                f"docker provider: {action}: {exc}",
                delay=self._config.retry_delay,
                reason="docker_temporary",
            )
        return PermanentProviderError(f"docker provider: {action}: {exc}", reason="docker_failed")

    def _containers(self, label: str, value: str) -> list[Any]:
        try:
            found = self._client.containers.list(all=True, filters={"label": f"{label}={value}"})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise self._error(f"list containers with {label}={value}", exc) from exc
        return [c for c in found if c.attrs.get("State", {}).get("Status") != "removing"]

    def _view(self, container: Any) -> LaunchedInstance:
        labels = dict(container.labels or {})
        status = container.attrs.get("State", {}).get("Status", container.status)
        merged = (container.attrs.get("GraphDriver") or {}).get("Data") or {}
        return LaunchedInstance(
            instance_id=labels.get(LABEL_INSTANCE, ""),
            group=labels.get(LABEL_GROUP, ""),
            state=_STATES.get(str(status), InstanceState.STOPPED),
            image_digest=labels.get(LABEL_IMAGE_DIGEST, ""),
            idempotency_key=labels.get(LABEL_IDEMPOTENCY_KEY, ""),
            provider_id=str(container.id),
            root_path=merged.get("MergedDir") or None,
            labels=labels,
        )

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        """Create and start a container from ``spec.image_ref``, or return the keyed one.

        Raises PermanentProviderError when the image is not on the engine (it is
        resolved by digest, never pulled by tag) or the engine refuses the
        container; TemporaryProviderError when the engine is unreachable.
        """
        existing = self._containers(LABEL_IDEMPOTENCY_KEY, spec.idempotency_key)
        container = existing[0] if existing else self._create(spec)
        try:
            if container.status not in ("running", "paused"):
                container.start()
            container.reload()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise self._error(f"start container for {spec.instance_id}", exc) from exc
        instance = self._view(container)
        if self._config.agent_prefix and instance.root_path:
            self._ensure_agent(spec, instance.root_path, instance.provider_id)
        return instance

    def _create(self, spec: LaunchSpec) -> Any:
        if "@sha256:" not in spec.image_ref:
            raise PermanentProviderError(
                f"docker provider: image {spec.image_ref} is not pinned (use repo@sha256:<hex>)",
                reason="unpinned_image",
            )
        reference = self._resolve(spec)
        try:
            return self._client.containers.create(
                reference,
                command=list(self._config.command) or None,
                name=f"corral-{spec.instance_id}",
                labels=spec.corral_labels(),
                detach=True,
            )
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise self._error(f"create container for {spec.instance_id}", exc) from exc

    def _resolve(self, spec: LaunchSpec) -> str:
        """What to create the container from: the pinned reference, or the image ID.

        ``repo@sha256:<manifest>`` is what an image pulled or loaded by digest
        answers to, and the container is created from exactly that reference.
        An image baked from a docker archive has no manifest digest: its digest
        is the config digest, which engines know as the image ID, and the
        container is created from that ID once the engine confirms it.
        """
        try:
            self._client.images.get(spec.image_ref)
        except docker.errors.ImageNotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise self._error(f"look up image {spec.image_ref}", exc) from exc
        else:
            return spec.image_ref
        try:
            image = self._client.images.get(spec.image_digest)
        except (docker.errors.ImageNotFound, docker.errors.NullResource):
            image = None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise self._error(f"look up image {spec.image_digest}", exc) from exc
        if image is None or image.id != spec.image_digest:
            raise PermanentProviderError(
                f"docker provider: image {spec.image_ref} is not on the engine; load or pull it "
                "by digest first",
                reason="unknown_image",
            )
        return str(image.id)

    def _agent_file(self, instance_id: str) -> str:
        assert self._config.data_dir is not None
        return os.path.join(self._config.data_dir, f"{instance_id}.json")

    def _ensure_agent(self, spec: LaunchSpec, root: str, container_id: str) -> None:
        data_dir = os.path.join(str(self._config.data_dir), spec.instance_id)
        os.makedirs(data_dir, exist_ok=True)
        record = self._agent_record(spec.instance_id)
        if record and self._agents.is_running(int(record["pid"]), root):
            return
        certificates = self._config.agent_certificates
        env = certificates.ensure(spec.instance_id, data_dir).env() if certificates else None
        argv = self._agent.argv(
            controller=spec.controller,
            root=root,
            instance_id=spec.instance_id,
            image_json=os.path.join(
                str(self._config.artifacts_dir or self._config.data_dir),
                "sha256-" + spec.image_digest.removeprefix("sha256:"),
                "image.json",
            ),
            group=spec.group,
            data_dir=data_dir,
        )
        engine = self._config.engine_socket()
        if engine is not None:  # container mode: upper-directory checks, see agent.daemon.container
            argv += [
                "--container",
                container_id,
                "--engine",
                engine,
                "--container-full-scan-interval",
                f"{self._config.agent_full_scan_interval:g}",
            ]
        pid = self._agents.start(argv, log_path=os.path.join(data_dir, "agent.log"), env=env)
        partial = self._agent_file(spec.instance_id) + ".tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump({"pid": pid, "root": root}, handle)
        os.replace(partial, self._agent_file(spec.instance_id))

    def _agent_record(self, instance_id: str) -> dict[str, Any] | None:
        if not self._config.data_dir:
            return None
        try:
            with open(self._agent_file(instance_id), encoding="utf-8") as handle:
                record: dict[str, Any] = json.load(handle)
        except (OSError, ValueError):
            return None
        return record

    def terminate(self, instance_id: str) -> None:
        """Stop the host agent (if any) and remove the container; a gone one is fine."""
        record = self._agent_record(instance_id)
        if record is not None:
            self._agents.stop(int(record["pid"]), str(record["root"]))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._agent_file(instance_id))
        if self._config.data_dir:
            discard(os.path.join(self._config.data_dir, instance_id))
        for container in self._containers(LABEL_INSTANCE, instance_id):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                continue
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise self._error(f"remove container of {instance_id}", exc) from exc

    def list(self, group: str) -> list[LaunchedInstance]:
        """The group's containers, found by the ``io.corral.group`` label."""
        views = [self._view(c) for c in self._containers(LABEL_GROUP, group)]
        return sorted(views, key=lambda view: view.instance_id)

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        """The container labelled with ``instance_id``, or None."""
        found = self._containers(LABEL_INSTANCE, instance_id)
        return self._view(found[0]) if found else None

    def close(self) -> None:
        self._client.close()
