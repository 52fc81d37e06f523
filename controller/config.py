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

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

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


_SCALARS = {
    f.name: f.type for f in fields(ControllerConfig) if f.name not in ("groups", "providers")
}


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ControllerConfig:
    """Build the config from ``path`` (TOML), ``env`` (``CORRAL_*``) and ``overrides``.

    Raises ConfigError naming the offending key and source.
    """
    config = ControllerConfig()
    if path is not None:
        config = _apply(config, _read_toml(path), source=str(path))
    environment = {
        key.removeprefix("CORRAL_").lower(): value
        for key, value in (env or {}).items()
        if key.startswith("CORRAL_") and key.removeprefix("CORRAL_").lower() in _SCALARS
    }
    config = _apply(config, environment, source="environment")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    return _apply(config, given, source="command line")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _apply(config: ControllerConfig, values: Mapping[str, Any], *, source: str) -> ControllerConfig:
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key == "groups":
            changes["groups"] = tuple(_group(item, source=source) for item in value)
            continue
        if key == "providers":
            changes["providers"] = _providers(value, source=source)
            continue
        if key not in _SCALARS:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        changes[key] = _coerce(key, value, source=source)
    return replace(config, **changes)


# Settings that are HOST:PORT addresses (empty allowed where it means "off"/"default").
_ADDRESSES = {"listen": False, "metrics_listen": True, "advertise": True}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_STORES = ("sqlite", "postgres")
# Integer settings where 0 has a meaning ("derive it"); the others must be positive.
_ZERO_ALLOWED = {"max_concurrent_replacements"}


def _coerce(key: str, value: Any, *, source: str) -> Any:
    kind = _SCALARS[key]
    try:
        if kind == "bool":
            return _boolean(value)
        if isinstance(value, bool):
            raise ValueError("expected a number or text, not true/false")
        if kind == "float":
            number = float(value)
            if not number >= 0 or number == float("inf"):
                raise ValueError("must be a finite number, not negative")
            return number
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("must be a whole number")
            integer = int(value)
            if integer < 0 or (integer == 0 and key not in _ZERO_ALLOWED):
                raise ValueError("must be positive")
            return integer
        text = str(value)
        if key in _ADDRESSES:
            _check_address(text, empty_ok=_ADDRESSES[key])
        elif key == "log_level" and text.lower() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
        elif key == "store" and text not in _STORES:
            raise ValueError(f"must be one of {', '.join(_STORES)}")
        return text
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {key} = {value!r} is not valid: {exc}") from exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _check_address(text: str, *, empty_ok: bool) -> None:
    if not text and empty_ok:
        return
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError("an IPv6 host goes in brackets: [::1]:7070")


def _group(item: Any, *, source: str) -> GroupConfig:
    if not isinstance(item, dict) or "name" not in item or "image" not in item:
        raise ConfigError(f"{source}: each [[groups]] entry needs a name and an image")
    unknown = set(item) - {
        "name",
        "image",
        "mode",
        "provider",
        "size",
        "max_concurrent_replacements",
    }
    if unknown:
        raise ConfigError(f"{source}: group {item['name']!r}: unknown keys {sorted(unknown)}")
    try:
        mode = GroupMode(item.get("mode", "observe"))
    except ValueError:
        raise ConfigError(
            f"{source}: group {item['name']!r}: mode must be 'observe' or 'enforce'"
        ) from None
    return GroupConfig(
        name=str(item["name"]),
        image=str(item["image"]),
        mode=mode,
        provider=str(item.get("provider", "local")),
        size=int(item.get("size", 0)),
        max_concurrent_replacements=int(item.get("max_concurrent_replacements", 0)),
    )


def _providers(value: Any, *, source: str) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{source}: [providers.NAME] must be tables of settings")
    return tuple(
        (str(name), tuple(sorted((str(k), v) for k, v in table.items())))
        for name, table in sorted(value.items())
    )
