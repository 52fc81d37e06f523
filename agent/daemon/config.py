"""The agent's settings: defaults, a TOML file, ``CORRAL_AGENT_*`` variables and flags.

Config is injected at runtime, never baked into the image. Each setting has one
name, used everywhere: the TOML key (top level, or in an ``[agent]`` table),
the environment variable ``CORRAL_AGENT_<NAME>`` and the command-line flag
``--<name-with-dashes>``. Later sources win: defaults < TOML < environment < flags.
The file itself is named by ``--config`` or ``CORRAL_AGENT_CONFIG``.

======================================  ==========================================
environment variable                    meaning (TOML key = lower-case suffix)
======================================  ==========================================
CORRAL_AGENT_CONTROLLER                 controller address, HOST:PORT (required)
CORRAL_AGENT_ROOT                       the root watched (default ``/``)
CORRAL_AGENT_INSTANCE_ID                instance id (default: machine-id, see identity)
CORRAL_AGENT_IMAGE_JSON                 the baked image.json
CORRAL_AGENT_MANIFEST                   the baked manifest.pb (default: beside image.json)
CORRAL_AGENT_GROUP                      the group the instance belongs to
CORRAL_AGENT_INTERVAL                   seconds between incremental scans
CORRAL_AGENT_JITTER                     random extra delay per scan, seconds
CORRAL_AGENT_FULL_REHASH_EVERY          a full rehash every N scans, or
CORRAL_AGENT_FULL_REHASH_INTERVAL       a full rehash every N seconds
CORRAL_AGENT_DATA_DIR                  where the agent keeps its own state
CORRAL_AGENT_METRICS_LISTEN             HOST:PORT for /metrics (off when empty)
CORRAL_AGENT_NICE                       CPU nice level to run at
CORRAL_AGENT_READ_BUDGET                bytes per second the scan may read (0: no limit)
CORRAL_AGENT_WORKERS                    hashing processes per scan (0: in the agent itself)
CORRAL_AGENT_DEADLINE                   seconds allowed for one call to the controller
CORRAL_AGENT_OUTBOX_CAPACITY            reports kept while the controller is away
CORRAL_AGENT_MAX_CHANGES                most changes sent as drift evidence
CORRAL_AGENT_MAX_EVIDENCE_BYTES         most bytes of drift evidence per report
CORRAL_AGENT_LOG_LEVEL                  DEBUG, INFO, WARNING or ERROR
CORRAL_AGENT_TLS_CA_FILE                PEM file of the CA that signs the controller
CORRAL_AGENT_TLS_CERT_FILE              PEM client certificate chain (mTLS)
CORRAL_AGENT_TLS_KEY_FILE               PEM client private key (mTLS); never logged
CORRAL_AGENT_ONCE                       one scan and its delivery, then exit
CORRAL_AGENT_WATCH                      follow kernel file events (default true)
CORRAL_AGENT_WATCH_SCAN_INTERVAL        seconds between safety-net scans in watch mode
CORRAL_AGENT_CONTAINER                  watch this container (id or name) on ENGINE
CORRAL_AGENT_ENGINE                     the engine's API socket, unix:///PATH
CORRAL_AGENT_CONTAINER_FULL_SCAN_INTERVAL  seconds between full scans of a container's root
======================================  ==========================================

Secrets (TLS keys) are only ever named by path; their content is read by the
transport when it connects and appears in no log or repr.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError

_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ENV_PREFIX = "CORRAL_AGENT_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


class ConfigError(AgentError):
    """A setting is missing, malformed or contradicts another."""


@dataclass(frozen=True)
class AgentConfig:
    """Every setting of ``corral-agent run``, validated."""

    controller: str
    root: str = "/"
    instance_id: str | None = None
    image_json: str = "/etc/corral/image.json"
    manifest: str | None = None
    group: str = "default"
    interval: float = 30.0
    jitter: float | None = None
    """Defaults to a tenth of the interval."""
    full_rehash_every: int | None = None
    full_rehash_interval: float | None = 86400.0
    data_dir: str = "/var/lib/corral-agent"
    metrics_listen: str | None = None
    nice: int = 10
    read_budget: int = 0
    workers: int = 0
    deadline: float = 5.0
    outbox_capacity: int = 128
    max_changes: int = 10_000
    max_evidence_bytes: int = 1 << 20
    log_level: str = "info"
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = dataclasses.field(default=None, repr=False)
    once: bool = False
    watch: bool = True
    """Follow kernel file events (inotify) where available; the interval then only heartbeats."""
    watch_scan_interval: float = 3600.0
    """In watch mode, seconds between the safety-net scans of the whole tree."""
    container: str | None = None
    """Watch this container (agent.daemon.container): root and upper dir come from ``engine``."""
    engine: str = "unix:///run/podman/podman.sock"
    container_full_scan_interval: float = 3600.0

    def __post_init__(self) -> None:
        _check_address("controller", self.controller)
        if self.metrics_listen is not None:
            _check_address("metrics_listen", self.metrics_listen)
        if self.interval <= 0:
            raise ConfigError(f"interval must be positive (got {self.interval})")
        if self.jitter is not None and self.jitter < 0:
            raise ConfigError(f"jitter must not be negative (got {self.jitter})")
        if self.full_rehash_every is not None and self.full_rehash_interval is not None:
            raise ConfigError("set only one of full_rehash_every and full_rehash_interval")
        for name in ("full_rehash_every", "full_rehash_interval"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive (got {value})")
        if self.container is not None and not self.engine.startswith("unix:///"):
            raise ConfigError(f"engine must be a unix:///PATH socket URL (got {self.engine!r})")
        for name in (
            "deadline",
            "outbox_capacity",
            "max_changes",
            "max_evidence_bytes",
            "watch_scan_interval",
            "container_full_scan_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (got {getattr(self, name)})")
        if self.workers < 0:
            raise ConfigError(f"workers must not be negative (got {self.workers})")
        if self.read_budget < 0:
            raise ConfigError(f"read_budget must not be negative (got {self.read_budget})")
        if not -20 <= self.nice <= 19:
            raise ConfigError(f"nice must be between -20 and 19 (got {self.nice})")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"log_level must be debug, info, warning or error ({self.log_level})")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ConfigError("tls_cert_file needs tls_ca_file (the controller's CA)")
        if not _GROUP.fullmatch(self.group):
            raise ConfigError(
                f"group {self.group!r} is not a group name: 1-63 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )

    @property
    def scan_jitter(self) -> float:
        return self.interval / 10 if self.jitter is None else self.jitter

    @property
    def manifest_path(self) -> str:
        """The manifest named, or ``manifest.pb`` beside image.json."""
        if self.manifest:
            return self.manifest
        return os.path.join(os.path.dirname(self.image_json) or ".", "manifest.pb")


def _check_address(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be HOST:PORT (got {value!r})")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _optional_text(value: Any) -> str | None:
    return _text(value) or None


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number")
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value in ("", None) else _number(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError("expected an integer")
    return int(value)


def _optional_integer(value: Any) -> int | None:
    return None if value in ("", None) else _integer(value)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise TypeError("expected true or false")


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "controller": _text,
    "root": _text,
    "instance_id": _optional_text,
    "image_json": _text,
    "manifest": _optional_text,
    "group": _text,
    "interval": _number,
    "jitter": _optional_number,
    "full_rehash_every": _optional_integer,
    "full_rehash_interval": _optional_number,
    "data_dir": _text,
    "metrics_listen": _optional_text,
    "nice": _integer,
    "read_budget": _integer,
    "workers": _integer,
    "deadline": _number,
    "outbox_capacity": _integer,
    "max_changes": _integer,
    "max_evidence_bytes": _integer,
    "log_level": _text,
    "tls_ca_file": _optional_text,
    "tls_cert_file": _optional_text,
    "tls_key_file": _optional_text,
    "once": _boolean,
    "watch": _boolean,
    "watch_scan_interval": _number,
    "container": _optional_text,
    "engine": _text,
    "container_full_scan_interval": _number,
}
# Setting one of a pair in a later source clears the other from earlier sources.
_EXCLUSIVE = {
    "full_rehash_every": "full_rehash_interval",
    "full_rehash_interval": "full_rehash_every",
}


def env_name(setting: str) -> str:
    """The environment variable for a setting (``interval`` → ``CORRAL_AGENT_INTERVAL``)."""
    return ENV_PREFIX + setting.upper()


def _parse(source: str, values: Mapping[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        parser = _PARSERS.get(key)
        if parser is None:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        try:
            parsed[key] = parser(raw)
        except (TypeError, ValueError) as exc:
            shown = "<secret>" if key == "tls_key_file" else repr(raw)
            raise ConfigError(f"{source}: {key} = {shown}: {exc}") from None
    return parsed


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = data.get("agent", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [agent] must be a table")
    return table


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV
    }


def load_config(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | None = None,
) -> AgentConfig:
    """Merge defaults < TOML < environment < flags into an AgentConfig.

    ``flags`` holds only the flags given on the command line (None means unset).
    The TOML file is ``config_file`` or, when None, ``$CORRAL_AGENT_CONFIG``.
    Raises ConfigError naming the source and setting that is wrong.
    """
    merged: dict[str, Any] = {}
    path = config_file or env.get(CONFIG_ENV) or None
    layers = [
        (f"config file {path}", _read_toml(path) if path else {}),
        ("environment", _from_env(env)),
        ("command line", {key: value for key, value in flags.items() if value is not None}),
    ]
    for source, values in layers:
        parsed = _parse(source, values)
        for key in parsed:
            if key in _EXCLUSIVE and _EXCLUSIVE[key] not in parsed:
                merged[_EXCLUSIVE[key]] = None
        merged.update(parsed)
    if "controller" not in merged:
        raise ConfigError(
            f"no controller address: pass --controller HOST:PORT or set {env_name('controller')}"
        )
    try:
        return AgentConfig(**merged)
    except TypeError as exc:  # pragma: no cover - _PARSERS and the dataclass agree
        raise ConfigError(str(exc)) from exc
