"""The local provider: an instance is a directory unpacked from an image artifact plus an agent.

The embedded default, so one machine runs a complete corral. Layout under the
data directory::

    artifacts/sha256-<hex>/   image.tar, manifest.pb, image.json (see import_artifact)
    instances/<id>/           instance.json, rootfs/, state/, agent.log
    instances/<id>/state/tls/ the agent's certificate, when ``agent_certificates`` is set

``instance.json`` holds the labels (group, instance, idempotency key, image
digest) and the agent's PID; it is written atomically. A launch writes it
*before* starting the agent, so a launch retried after a crash finds the
directory by its idempotency key and only (re)starts the agent if needed.
A directory being created or removed carries a dot-prefixed name and is never
listed. Surge: a new instance costs only disk space, so the old one stays
until its replacement reports conformant.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agent.image.artifact import ARTIFACT_NAME, IMAGE_JSON_NAME, MANIFEST_NAME, ArtifactError
from agent.image.unpack import unpack_artifact
from controller.providers.agentcerts import AgentCertificates
from controller.providers.agentproc import AgentCommand, AgentProcesses, default_agent_prefix
from controller.providers.base import (
    InstanceState,
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
)
from controller.providers.errors import PermanentProviderError

INSTANCE_FILE = "instance.json"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

log = logging.getLogger("corral.providers.local")


@dataclass(frozen=True)
class LocalConfig:
    """Settings of the local provider."""

    data_dir: str
    agent_prefix: tuple[str, ...] = ()
    """The agent's argv prefix; empty means ``corral-agent`` beside this Python."""
    interval: float = 1.0
    """The agents' scan interval in seconds."""
    stop_timeout: float = 5.0
    """Seconds between SIGTERM and SIGKILL when an instance is terminated."""
    agent_certificates: AgentCertificates | None = None
    """Issue each agent a certificate for its instance (the controller requires mTLS)."""


_GONE = ".gone-"
"""Prefix of an instance directory renamed away by terminate, before it is deleted."""


def _check_id(value: str, what: str) -> None:
    if not value or value.startswith(".") or not set(value) <= _ID_CHARS:
        raise PermanentProviderError(
            f"{what} {value!r} cannot name a directory (letters, digits, '-', '_', '.')",
            reason="invalid_id",
        )


def _write_json_atomic(path: str, document: dict[str, Any]) -> None:
    partial = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _remove_tree(path: str) -> None:
    """Remove a tree even when it holds read-only directories (unprivileged unpack)."""

    def retry(function: Any, failed: str, _info: Any) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        function(failed)

    shutil.rmtree(path, onerror=retry)


class LocalProvider(Provider):
    """Instances as directories on this machine, each watched by its own agent process."""

    name = "local"
    replacement_strategy = ReplacementStrategy.SURGE

    def __init__(self, config: LocalConfig, *, processes: AgentProcesses | None = None) -> None:
        self._config = config
        self._agent = AgentCommand(
            prefix=config.agent_prefix or default_agent_prefix(), interval=config.interval
        )
        self._processes = processes or AgentProcesses()
        self._artifacts = os.path.join(config.data_dir, "artifacts")
        self._instances = os.path.join(config.data_dir, "instances")
        os.makedirs(self._artifacts, exist_ok=True)
        os.makedirs(self._instances, exist_ok=True)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Finish removals a kill interrupted: ``.gone-*`` trees were already renamed away
        from their instance (terminated), only their deletion was cut short."""
        for name in os.listdir(self._instances):
            if name.startswith(_GONE):
                path = os.path.join(self._instances, name)
                log.info("removing %s left by an interrupted terminate", path)
                _remove_tree(path)

    # -- artifacts -------------------------------------------------------------------------

    def artifact_dir(self, image_digest: str) -> str:
        """Where the artifact with ``image_digest`` is (or would be) stored."""
        algorithm, _, hex_digest = image_digest.partition(":")
        if (
            algorithm != "sha256"
            or len(hex_digest) != 64
            or not set(hex_digest) <= set("0123456789abcdef")
        ):
            raise PermanentProviderError(
                f"image digest {image_digest!r} is not sha256:<64 hex>", reason="invalid_digest"
            )
        return os.path.join(self._artifacts, f"sha256-{hex_digest}")

    def import_artifact(self, out_dir: str) -> str:
        """Copy a ``corral image build`` output into the store; returns its image digest.

        The tarball is hashed again and must match image.json's ``image_digest``.
        Importing the same artifact twice is a no-op. Raises PermanentProviderError
        for an incomplete or inconsistent build directory.
        """
        try:
            with open(os.path.join(out_dir, IMAGE_JSON_NAME), encoding="utf-8") as handle:
                document = json.load(handle)
            digest = str(document["image_digest"])
            with open(os.path.join(out_dir, ARTIFACT_NAME), "rb") as handle:
                actual = "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
        except (OSError, ValueError, KeyError) as exc:
            raise PermanentProviderError(
                f"{out_dir} is not an image build directory: {exc}", reason="invalid_artifact"
            ) from exc
        if actual != digest:
            raise PermanentProviderError(
                f"{out_dir}/{ARTIFACT_NAME} has digest {actual}, image.json says {digest}",
                reason="invalid_artifact",
            )
        target = self.artifact_dir(digest)
        if os.path.isdir(target):
            return digest
        staging = os.path.join(self._artifacts, f".import-{uuid.uuid4().hex}")
        os.mkdir(staging)
        for name in (ARTIFACT_NAME, MANIFEST_NAME, IMAGE_JSON_NAME):
            shutil.copyfile(os.path.join(out_dir, name), os.path.join(staging, name))
        try:
            os.rename(staging, target)
        except OSError:
            _remove_tree(staging)
            if not os.path.isdir(target):
                raise
        return digest

    # -- instances -------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise launches and terminations, across threads and processes."""
        with open(os.path.join(self._instances, ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _dir(self, instance_id: str) -> str:
        return os.path.join(self._instances, instance_id)

    def _read(self, instance_id: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self._dir(instance_id), INSTANCE_FILE), encoding="utf-8") as f:
                document: dict[str, Any] = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as exc:
            raise PermanentProviderError(
                f"instance {instance_id}: unreadable {INSTANCE_FILE}: {exc}",
                reason="corrupt_instance",
            ) from exc
        return document

    def _documents(self) -> Iterator[dict[str, Any]]:
        for name in sorted(os.listdir(self._instances)):
            if not name.startswith("."):
                document = self._read(name)
                if document is not None:
                    yield document

    def _marker(self, instance_id: str) -> str:
        """A string only this instance's agent has on its command line: its root."""
        return os.path.join(self._dir(instance_id), "rootfs")

    def _view(self, document: dict[str, Any]) -> LaunchedInstance:
        instance_id = str(document["instance_id"])
        pid = document.get("pid")
        running = isinstance(pid, int) and self._processes.is_running(
            pid, self._marker(instance_id)
        )
        return LaunchedInstance(
            instance_id=instance_id,
            group=str(document["group"]),
            state=InstanceState.RUNNING if running else InstanceState.STOPPED,
            image_digest=str(document["image_digest"]),
            idempotency_key=str(document["idempotency_key"]),
            provider_id=str(pid) if running else "",
            root_path=self._marker(instance_id),
            labels=dict(document.get("labels", {})),
        )

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        """Unpack the image into ``instances/<id>`` and start its agent (idempotent by key).

        Raises PermanentProviderError when the image is not in the artifact
        store, cannot be unpacked, the id is taken by another launch, or the
        agent cannot be started.
        """
        _check_id(spec.instance_id, "instance id")
        with self._locked():
            document = next(
                (d for d in self._documents() if d["idempotency_key"] == spec.idempotency_key),
                None,
            )
            if document is None:
                document = self._create(spec)
            self._ensure_agent(document)
            return self._view(document)

    def _create(self, spec: LaunchSpec) -> dict[str, Any]:
        if os.path.lexists(self._dir(spec.instance_id)):
            raise PermanentProviderError(
                f"instance id {spec.instance_id} is already used by another launch",
                reason="duplicate_instance",
            )
        artifact = self.artifact_dir(spec.image_digest)
        if not os.path.isfile(os.path.join(artifact, ARTIFACT_NAME)):
            raise PermanentProviderError(
                f"image {spec.image_ref} is not in the local artifact store {self._artifacts}; "
                "build it with `corral image build` and import it",
                reason="unknown_image",
            )
        self._remove_abandoned_staging(spec.instance_id)
        staging = os.path.join(self._instances, f".new-{spec.instance_id}-{uuid.uuid4().hex}")
        os.mkdir(staging)
        try:
            unpack_artifact(os.path.join(artifact, ARTIFACT_NAME), os.path.join(staging, "rootfs"))
            os.mkdir(os.path.join(staging, "state"), 0o700)
            document: dict[str, Any] = {
                "instance_id": spec.instance_id,
                "group": spec.group,
                "image_ref": spec.image_ref,
                "image_digest": spec.image_digest,
                "idempotency_key": spec.idempotency_key,
                "controller": spec.controller,
                "labels": spec.corral_labels(),
                "pid": None,
            }
            _write_json_atomic(os.path.join(staging, INSTANCE_FILE), document)
            os.rename(staging, self._dir(spec.instance_id))
        except ArtifactError as exc:
            _remove_tree(staging)
            raise PermanentProviderError(
                f"cannot unpack {spec.image_ref}: {exc}", reason="unpack_failed"
            ) from exc
        except BaseException:
            _remove_tree(staging)
            raise
        return document

    def _remove_abandoned_staging(self, instance_id: str) -> None:
        """Remove what a launch killed mid-unpack left (the provider lock is held)."""
        prefix = f".new-{instance_id}-"
        for name in os.listdir(self._instances):
            if name.startswith(prefix):
                log.info(
                    "removing an unfinished earlier launch", extra={"instance_id": instance_id}
                )
                _remove_tree(os.path.join(self._instances, name))

    def _ensure_agent(self, document: dict[str, Any]) -> None:
        instance_id = str(document["instance_id"])
        marker = self._marker(instance_id)
        pid = document.get("pid")
        if isinstance(pid, int) and self._processes.is_running(pid, marker):
            return
        found = self._processes.find(marker)  # started before a crash, PID never recorded
        if found is None:
            data_dir = os.path.join(self._dir(instance_id), "state")
            certificates = self._config.agent_certificates
            env = certificates.ensure(instance_id, data_dir).env() if certificates else None
            argv = self._agent.argv(
                controller=str(document["controller"]),
                root=marker,
                instance_id=instance_id,
                image_json=os.path.join(
                    self.artifact_dir(str(document["image_digest"])), IMAGE_JSON_NAME
                ),
                group=str(document["group"]),
                data_dir=data_dir,
            )
            log_path = os.path.join(self._dir(instance_id), "agent.log")
            try:
                found = self._processes.start(argv, log_path=log_path, env=env)
            except OSError as exc:
                raise PermanentProviderError(
                    f"cannot start the agent {argv[0]}: {exc.strerror or exc}",
                    reason="agent_start_failed",
                ) from exc
        document["pid"] = found
        _write_json_atomic(os.path.join(self._dir(instance_id), INSTANCE_FILE), document)

    def terminate(self, instance_id: str) -> None:
        """Stop the instance's agent and remove its directory; a gone instance is fine."""
        _check_id(instance_id, "instance id")
        with self._locked():
            document = self._read(instance_id)
            if document is None:
                return
            pid = document.get("pid")
            marker = self._marker(instance_id)
            if isinstance(pid, int):
                self._processes.stop(pid, marker, timeout=self._config.stop_timeout)
            stray = self._processes.find(marker)
            if stray is not None:
                self._processes.stop(stray, marker, timeout=self._config.stop_timeout)
            trash = os.path.join(self._instances, f"{_GONE}{instance_id}-{uuid.uuid4().hex}")
            os.rename(self._dir(instance_id), trash)
        _remove_tree(trash)

    def list(self, group: str) -> list[LaunchedInstance]:
        """Every instance directory of ``group``, sorted by instance id."""
        return [self._view(d) for d in self._documents() if d["group"] == group]

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        """The instance, or None when its directory does not exist."""
        if not instance_id or instance_id.startswith(".") or not set(instance_id) <= _ID_CHARS:
            return None
        document = self._read(instance_id)
        return None if document is None else self._view(document)
