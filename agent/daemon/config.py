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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent import settings
from agent.errors import AgentError

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
        settings.check_fields(self, _CHECKS, ConfigError)
        if self.full_rehash_every is not None and self.full_rehash_interval is not None:
            raise ConfigError("set only one of full_rehash_every and full_rehash_interval")
        if self.container is not None and not self.engine.startswith("unix:///"):
            raise ConfigError(
                "engine must be a unix:///PATH socket URL to watch a container "
                f"(got {self.engine!r})"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ConfigError("tls_cert_file needs tls_ca_file (the controller's CA)")

    @property
    def scan_jitter(self) -> float:
        return self.interval / 10 if self.jitter is None else self.jitter

    @property
    def manifest_path(self) -> str:
        """The manifest named, or ``manifest.pb`` beside image.json."""
        if self.manifest:
            return self.manifest
        return os.path.join(os.path.dirname(self.image_json) or ".", "manifest.pb")


# The agent's own rules, per setting; the rules across settings are in __post_init__.
_CHECKS: dict[str, settings.Check] = {
    "controller": settings.host_port(host_required=True, empty_ok=False),
    "metrics_listen": settings.host_port(host_required=True, empty_ok=True),
    "interval": settings.positive,
    "jitter": settings.not_negative,
    "full_rehash_every": settings.positive,
    "full_rehash_interval": settings.positive,
    "deadline": settings.positive,
    "outbox_capacity": settings.positive,
    "max_changes": settings.positive,
    "max_evidence_bytes": settings.positive,
    "watch_scan_interval": settings.positive,
    "container_full_scan_interval": settings.positive,
    "workers": settings.not_negative,
    "read_budget": settings.not_negative,
    "nice": settings.between(-20, 19),
    "log_level": settings.one_of("debug", "info", "warning", "error", ignore_case=True),
    "group": settings.matches(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}",
        "a group name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
    ),
}

LOADER = settings.Loader(
    cls=AgentConfig,
    error=ConfigError,
    env_prefix=ENV_PREFIX,
    env_skip=frozenset({CONFIG_ENV}),
    file_table="agent",
    checks=_CHECKS,
    # Setting one of a pair in a later source clears the other from earlier sources.
    exclusive={
        "full_rehash_every": "full_rehash_interval",
        "full_rehash_interval": "full_rehash_every",
    },
    missing={
        "controller": "no controller address: pass --controller HOST:PORT "
        f"or set {ENV_PREFIX}CONTROLLER",
    },
)


def env_name(setting: str) -> str:
    """The environment variable for a setting (``interval`` → ``CORRAL_AGENT_INTERVAL``)."""
    return LOADER.env_name(setting)


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
    path = config_file or env.get(CONFIG_ENV) or None
    return LOADER.load(path=path, env=env, flags=flags)
