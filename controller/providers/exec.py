"""The exec provider: the operator's own commands (Terraform, a cloud CLI, a script).

How a single VM, or anything corral has no adapter for, is redeployed. Each
operation is an argv template (never a shell string); placeholders
``{group}``, ``{image_ref}``, ``{image_digest}``, ``{instance_id}`` and
``{idempotency_key}`` are substituted per argument, so a value can never
become a second argument or a shell construct (``{{`` and ``}}`` are literal
braces). The commands answer on stdout
in JSON:

- ``launch`` prints the launched instance: ``{"instance_id": ..., "state"?,
  "root_path"?, "provider_id"?, "labels"?}``. Before running it, the provider
  runs ``list`` and returns an instance already carrying the idempotency key
  instead (scripts should be idempotent on ``{idempotency_key}`` as well);
- ``list`` (with ``{group}``) prints ``[instance, ...]`` or
  ``{"instances": [...]}``; each instance may carry ``group``,
  ``image_digest`` and ``idempotency_key`` fields;
- ``describe`` (with ``{instance_id}``) prints one instance or ``null``;
- ``terminate`` (with ``{instance_id}``) prints nothing; terminating a gone
  instance must exit 0.

A non-zero exit becomes a PermanentProviderError carrying the tail of stderr;
exit 75 (EX_TEMPFAIL) or a timeout becomes a TemporaryProviderError.
"""

from __future__ import annotations

import json
import os
import signal
import string
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

PLACEHOLDERS = frozenset({"group", "image_ref", "image_digest", "instance_id", "idempotency_key"})
EX_TEMPFAIL = 75
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class ExecConfig:
    """The operator's command templates and how long each may run."""

    launch: tuple[str, ...]
    terminate: tuple[str, ...]
    list: tuple[str, ...]
    describe: tuple[str, ...]
    timeout: float = 300.0
    """Seconds a command may run before it is killed (a temporary failure)."""
    replacement_strategy: ReplacementStrategy = ReplacementStrategy.SURGE
    """``surge`` when a new instance can run beside the old one, else ``terminate_first``."""
    retry_delay: float = 30.0
    """The delay suggested to the engine after a temporary failure."""
    env: Mapping[str, str] | None = None
    """Extra environment for the commands (added to the controller's own)."""


def _check_template(operation: str, template: Sequence[str]) -> None:
    if not template:
        raise PermanentProviderError(f"exec provider: no {operation} command configured")
    for argument in template:
        try:
            fields = [
                "{"
                + (name or "")
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
                for _, name, spec, conversion in string.Formatter().parse(argument)
                if name is not None
            ]
        except ValueError as exc:
            raise PermanentProviderError(
                f"exec provider: {operation} argument {argument!r}: {exc}"
            ) from exc
        unknown = {field for field in fields if field.strip("{}") not in PLACEHOLDERS}
        if unknown:
            raise PermanentProviderError(
                f"exec provider: {operation} argument {argument!r} uses unknown placeholder(s) "
                f"{', '.join(sorted(unknown))} (write {{{{ and }}}} for literal braces); "
                f"known: {', '.join(sorted(PLACEHOLDERS))}"
            )


class ExecProvider(Provider):
    """Runs the operator's commands; see the module docstring for their contract."""

    name = "exec"

    def __init__(self, config: ExecConfig) -> None:
        for operation in ("launch", "terminate", "list", "describe"):
            _check_template(operation, getattr(config, operation))
        self._config = config
        self.replacement_strategy = config.replacement_strategy

    def _run(self, operation: str, values: Mapping[str, str]) -> Any:
        template: tuple[str, ...] = getattr(self._config, operation)
        argv = [argument.format_map(values) for argument in template]
        env = None if self._config.env is None else {**os.environ, **self._config.env}
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise PermanentProviderError(
                f"exec provider: cannot run {operation} command {argv[0]}: {exc.strerror or exc}",
                reason="exec_not_runnable",
            ) from exc
        try:
            stdout, stderr = process.communicate(timeout=self._config.timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise TemporaryProviderError(
                f"exec provider: {operation} command timed out after {self._config.timeout:g} s",
                delay=self._config.retry_delay,
                reason="exec_timeout",
            ) from exc
        if process.returncode != 0:
            tail = stderr.decode("utf-8", "replace")[-_STDERR_TAIL:].strip()
            message = f"exec provider: {operation} command exited {process.returncode}: {tail}"
            if process.returncode == EX_TEMPFAIL:
                raise TemporaryProviderError(
                    message, delay=self._config.retry_delay, reason="exec_tempfail"
                )
            raise PermanentProviderError(message, reason="exec_failed")
        if operation == "terminate":
            return None
        try:
            return json.loads(stdout)
        except ValueError as exc:
            raise PermanentProviderError(
                f"exec provider: {operation} command printed no valid JSON: {exc}",
                reason="exec_bad_output",
            ) from exc

    def _instance(self, data: Any, *, group: str = "") -> LaunchedInstance:
        if not isinstance(data, dict) or not isinstance(data.get("instance_id"), str):
            raise PermanentProviderError(
                f"exec provider: expected an object with a string instance_id, got {data!r:.200}",
                reason="exec_bad_output",
            )
        labels = data.get("labels") or {}
        try:
            state = InstanceState(data.get("state", InstanceState.RUNNING))
        except ValueError:
            state = InstanceState.RUNNING
        instance_group = str(data.get("group") or group)
        image_digest = str(data.get("image_digest", ""))
        key = str(data.get("idempotency_key", ""))
        known = {LABEL_GROUP: instance_group, LABEL_INSTANCE: data["instance_id"]}
        known.update({LABEL_IMAGE_DIGEST: image_digest} if image_digest else {})
        known.update({LABEL_IDEMPOTENCY_KEY: key} if key else {})
        extra = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        return LaunchedInstance(
            instance_id=data["instance_id"],
            group=instance_group,
            state=state,
            image_digest=image_digest,
            idempotency_key=key,
            provider_id=str(data.get("provider_id", "")),
            root_path=data.get("root_path") if isinstance(data.get("root_path"), str) else None,
            labels={**extra, **known},
        )

    @staticmethod
    def _values(**values: str) -> dict[str, str]:
        return {name: values.get(name, "") for name in PLACEHOLDERS}

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        """Return the instance already carrying the key, else run the launch command.

        Raises TemporaryProviderError on a timeout or exit 75, PermanentProviderError
        on another failure or output that is not the expected JSON.
        """
        for instance in self.list(spec.group):
            if instance.idempotency_key == spec.idempotency_key:
                return instance
        values = self._values(
            group=spec.group,
            image_ref=spec.image_ref,
            image_digest=spec.image_digest,
            instance_id=spec.instance_id,
            idempotency_key=spec.idempotency_key,
        )
        launched = self._instance(self._run("launch", values), group=spec.group)
        return LaunchedInstance(
            instance_id=launched.instance_id,
            group=launched.group,
            state=launched.state,
            image_digest=launched.image_digest or spec.image_digest,
            idempotency_key=launched.idempotency_key or spec.idempotency_key,
            provider_id=launched.provider_id,
            root_path=launched.root_path,
            labels={**spec.corral_labels(), **launched.labels},
        )

    def terminate(self, instance_id: str) -> None:
        """Run the terminate command (which must succeed for a gone instance)."""
        self._run("terminate", self._values(instance_id=instance_id))

    def list(self, group: str) -> list[LaunchedInstance]:
        """The list command's instances of ``group``, sorted by instance id."""
        data = self._run("list", self._values(group=group))
        if isinstance(data, dict):
            data = data.get("instances")
        if not isinstance(data, list):
            raise PermanentProviderError(
                "exec provider: list command must print a JSON array of instances",
                reason="exec_bad_output",
            )
        instances = [self._instance(item, group=group) for item in data]
        return sorted((i for i in instances if i.group == group), key=lambda i: i.instance_id)

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        """The describe command's instance, or None when it prints ``null``."""
        data = self._run("describe", self._values(instance_id=instance_id))
        return None if data is None else self._instance(data)
