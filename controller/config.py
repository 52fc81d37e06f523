"""The controller's settings: defaults < TOML file < ``CORRAL_*`` environment < flags.

Parsed once, at start-up, into frozen dataclasses; nothing reads the environment
at import time. Groups may be declared in the file::

    listen = "0.0.0.0:7070"
    metrics_listen = "0.0.0.0:9470"
    data_dir = "/var/lib/corral"
    store = "sqlite"            # or "postgres" (replicas; postgres_dsn or CORRAL_POSTGRES_DSN)
    report_interval = 30        # seconds; what agents are configured with
    stale_after = 90            # silent this long → unknown (default 3 x report_interval)

    [[groups]]
    name = "web"
    image = "web@sha256:…"
    mode = "observe"            # or "enforce"
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent import settings
from controller.domain.model import GroupMode
from controller.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:7070"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9470"
MIB = 1024 * 1024


@dataclass(frozen=True)
class GroupConfig:
    """A group declared in the config file."""

    name: str
    image: str
    mode: GroupMode = GroupMode.OBSERVE
    provider: str = "local"
    size: int = 0
    #: Replacements in flight at once; 0 means max(1, 10% of the group).
    max_concurrent_replacements: int = 0


@dataclass(frozen=True)
class ControllerConfig:
    """Everything ``corral-controller serve`` needs."""

    listen: str = DEFAULT_LISTEN
    #: Where Prometheus scrapes; empty disables the metrics server.
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    data_dir: str = "/var/lib/corral"
    #: ``sqlite`` (embedded, one controller) or ``postgres`` (replicas share one database).
    store: str = "sqlite"
    #: libpq connection string for ``store = "postgres"``; it may hold a password, so it
    #: is never logged (prefer the ``CORRAL_POSTGRES_DSN`` environment variable or a .pgpass).
    postgres_dsn: str = field(default="", repr=False)
    #: How often agents report (seconds); the default staleness derives from it.
    report_interval: float = 30.0
    #: Silence longer than this marks an instance unknown; 0 means 3 x report_interval.
    stale_after: float = 0.0
    #: How often the staleness sweep runs (seconds).
    sweep_interval: float = 10.0
    #: A retired instance leaves the live store this long after it was last heard from
    #: (its history stays in the audit log); at least the breaker window.
    retired_retention: float = 7 * 86400.0
    #: A report stamped further than this into the controller's future is refused
    #: (INVALID_ARGUMENT, reason clock_skew), so one bad clock cannot wedge ordering.
    max_clock_skew: float = 300.0
    #: Largest gRPC message accepted; bigger ones get RESOURCE_EXHAUSTED.
    max_message_bytes: int = 4 * MIB
    #: Largest manifest RegisterImage accepts (it arrives in chunks).
    max_manifest_bytes: int = 256 * MIB
    #: Heartbeats are written behind at this interval (seconds).
    flush_interval: float = 1.0
    log_level: str = "info"
    #: How often the replacement engine runs (seconds); it also runs after each taint.
    replacer_interval: float = 1.0
    #: Every group is planned at least this often (groups with replacements in flight,
    #: or nudged by a state change, are planned every ``replacer_interval``).
    replacer_sweep_interval: float = 30.0
    #: A launched replacement that has not reported conformant by then is a failed attempt.
    startup_grace: float = 600.0
    #: Wait after the first failed attempt (doubles each time, capped at 30 min).
    backoff_base: float = 30.0
    #: Launch attempts before a replacement is abandoned (with an alert).
    max_attempts: int = 3
    #: The breaker opens when strictly more than this share of a group is tainted...
    breaker_threshold: float = 0.20
    #: ...within this many seconds.
    breaker_window: float = 600.0
    #: HOST:PORT the instances' agents are told to report to (default: the listen address).
    advertise: str = ""
    #: Mutual TLS: the CA that signs clients, and the controller's chain and key (PEM paths).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = field(default="", repr=False)
    #: Serve plaintext on a non-loopback address anyway (logged loudly at every start).
    insecure: bool = False
    #: ``spiffe://<trust_domain>/<role>/<name>`` is what client certificates must name.
    trust_domain: str = "corral"
    #: Each agent identity's calls a second, and the burst it may save up.
    agent_rate: float = 2.0
    agent_burst: int = 60
    groups: tuple[GroupConfig, ...] = field(default=())
    #: Provider settings by provider name: ``[providers.local] data_dir = ...``.
    providers: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = field(default=())

    @property
    def effective_stale_after(self) -> float:
        return self.stale_after or 3 * self.report_interval


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ControllerConfig:
    """Build the config from ``path`` (TOML), ``env`` (``CORRAL_*``) and ``overrides``.

    Raises ConfigError naming the offending key and source.
    """
    return LOADER.load(
        path=None if path is None else str(path), env=env or {}, flags=overrides or {}
    )


def _group(item: Any) -> GroupConfig:
    if not isinstance(item, dict) or "name" not in item or "image" not in item:
        raise ValueError("each [[groups]] entry needs a name and an image")
    name = item["name"]
    unknown = set(item) - set(_GROUP_FIELDS) - {"mode"}
    if unknown:
        raise ValueError(f"group {name!r}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, raw in item.items():
        if key == "mode":
            if not isinstance(raw, str) or raw not in {mode.value for mode in GroupMode}:
                raise ValueError(f"group {name!r}: mode must be 'observe' or 'enforce'")
            values[key] = GroupMode(raw)
            continue
        try:
            values[key] = _GROUP_FIELDS[key](raw)
            if key in ("size", "max_concurrent_replacements"):
                settings.not_negative(values[key])
        except ValueError as exc:
            raise ValueError(f"group {name!r}: {key} {exc}") from None
    return GroupConfig(**values)


def _groups(value: Any) -> tuple[GroupConfig, ...]:
    if not isinstance(value, list):
        raise ValueError("groups must be a list of [[groups]] tables")
    return tuple(_group(item) for item in value)


def _providers(value: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError("[providers.NAME] must be tables of settings")
    return tuple(
        (str(name), tuple(sorted((str(k), v) for k, v in table.items())))
        for name, table in sorted(value.items())
    )


_GROUP_FIELDS = {
    f.name: settings.converter(typing.get_type_hints(GroupConfig)[f.name])
    for f in fields(GroupConfig)
    if f.name != "mode"
}


def _rules() -> dict[str, settings.Check]:
    """The controller's rules: every number positive (durations may be 0), plus a few formats."""
    rules: dict[str, settings.Check] = {}
    for name, kind in typing.get_type_hints(ControllerConfig).items():
        if kind is float:
            rules[name] = settings.not_negative
        elif kind is int:
            rules[name] = settings.positive
    rules.update(
        {
            "listen": settings.host_port(host_required=False, empty_ok=False),
            "metrics_listen": settings.host_port(host_required=False, empty_ok=True),
            "advertise": settings.host_port(host_required=False, empty_ok=True),
            "log_level": settings.one_of(*_LOG_LEVELS, ignore_case=True),
            "store": settings.one_of(*_STORES),
        }
    )
    return rules


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_STORES = ("sqlite", "postgres")

LOADER = settings.Loader(
    cls=ControllerConfig,
    error=ConfigError,
    env_prefix="CORRAL_",
    # CORRAL_* is shared with the client and the agent: only this program's names count.
    env_strict=False,
    checks=_rules(),
    tables={"groups": _groups, "providers": _providers},
)
