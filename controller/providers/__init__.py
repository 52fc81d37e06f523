"""Providers: how corral launches and terminates instances (see :mod:`.base` for the port).

Built-ins are created explicitly by name (no plug-in entry points). The docker
and aws-asg adapters import their SDKs (extras ``docker`` and ``aws``) only
when asked for, so a controller using the local provider needs neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.providers.agentcerts import DEFAULT_DAYS, AgentCertificates
from controller.providers.base import (
    InstanceState,
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
)
from controller.providers.errors import (
    PermanentProviderError,
    ProviderError,
    TemporaryProviderError,
)
from controller.security.identity import DEFAULT_TRUST_DOMAIN

__all__ = [
    "AGENT_CERT_KEYS",
    "PROVIDER_NAMES",
    "InstanceState",
    "LaunchSpec",
    "LaunchedInstance",
    "PermanentProviderError",
    "Provider",
    "ProviderError",
    "ReplacementStrategy",
    "TemporaryProviderError",
    "create_provider",
]

PROVIDER_NAMES: tuple[str, ...] = ("local", "docker", "exec", "aws-asg")


def _strings(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = config.get(key, ())
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise PermanentProviderError(
            f"provider setting {key!r} must be a list of strings (an argv), not a shell string",
            reason="invalid_config",
        )
    return tuple(value)


def _check_keys(name: str, config: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise PermanentProviderError(
            f"{name} provider: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}",
            reason="invalid_config",
        )


#: Settings of the providers that start host agents, for the agents' certificates.
AGENT_CERT_KEYS = frozenset({"agent_ca_dir", "agent_cert_days"})


def _agent_certificates(
    config: Mapping[str, Any], *, trust_domain: str
) -> AgentCertificates | None:
    """The ``agent_ca_dir`` setting as an issuer, checked now; None when it is not set."""
    ca_dir = config.get("agent_ca_dir")
    if not ca_dir:
        return None
    days = config.get("agent_cert_days", DEFAULT_DAYS)
    if isinstance(days, bool) or not isinstance(days, int):
        raise PermanentProviderError(
            f"agent_cert_days must be a whole number of days, not {days!r}",
            reason="invalid_config",
        )
    certificates = AgentCertificates(ca_dir=str(ca_dir), days=days, trust_domain=trust_domain)
    certificates.check()
    return certificates


def create_provider(
    name: str, config: Mapping[str, Any], *, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> Provider:
    """Build the provider called ``name`` from a parsed config table.

    ``trust_domain`` is what agent certificates issued from ``agent_ca_dir`` name.
    Raises PermanentProviderError for an unknown name or setting, or a missing
    SDK (install ``corral[docker]`` or ``corral[aws]``).
    """
    try:
        if name == "local":
            from controller.providers.local import LocalConfig, LocalProvider  # noqa: PLC0415

            _check_keys(
                name,
                config,
                {"data_dir", "agent_command", "interval", "stop_timeout"} | AGENT_CERT_KEYS,
            )
            return LocalProvider(
                LocalConfig(
                    data_dir=str(config["data_dir"]),
                    agent_prefix=_strings(config, "agent_command"),
                    interval=float(config.get("interval", 1.0)),
                    stop_timeout=float(config.get("stop_timeout", 5.0)),
                    agent_certificates=_agent_certificates(config, trust_domain=trust_domain),
                )
            )
        if name == "exec":
            from controller.providers.exec import ExecConfig, ExecProvider  # noqa: PLC0415

            _check_keys(
                name,
                config,
                {"launch", "terminate", "list", "describe", "timeout", "replacement_strategy"},
            )
            return ExecProvider(
                ExecConfig(
                    launch=_strings(config, "launch"),
                    terminate=_strings(config, "terminate"),
                    list=_strings(config, "list"),
                    describe=_strings(config, "describe"),
                    timeout=float(config.get("timeout", 300.0)),
                    replacement_strategy=ReplacementStrategy(
                        config.get("replacement_strategy", "surge")
                    ),
                )
            )
        if name == "docker":
            from controller.providers.docker import DockerConfig, DockerProvider  # noqa: PLC0415

            _check_keys(
                name,
                config,
                {"base_url", "command", "agent_command", "data_dir", "artifacts_dir", "interval"}
                | {"full_scan_interval"}
                | AGENT_CERT_KEYS,
            )
            return DockerProvider(
                DockerConfig(
                    base_url=config.get("base_url"),
                    command=_strings(config, "command"),
                    agent_prefix=_strings(config, "agent_command"),
                    agent_interval=float(config.get("interval", 1.0)),
                    data_dir=config.get("data_dir"),
                    artifacts_dir=config.get("artifacts_dir"),
                    agent_certificates=_agent_certificates(config, trust_domain=trust_domain),
                    agent_full_scan_interval=float(config.get("full_scan_interval", 3600.0)),
                )
            )
        if name == "aws-asg":
            from controller.providers.aws_asg import AwsAsgConfig, AwsAsgProvider  # noqa: PLC0415

            _check_keys(name, config, {"region", "endpoint_url", "group_names"})
            return AwsAsgProvider(
                AwsAsgConfig(
                    region=str(config.get("region", "us-east-1")),
                    endpoint_url=config.get("endpoint_url"),
                    group_names=dict(config.get("group_names", {})),
                )
            )
    except ImportError as exc:
        extra = "docker" if name == "docker" else "aws"
        raise PermanentProviderError(
            f"the {name} provider needs the {exc.name} package: pip install 'corral[{extra}]'",
            reason="missing_sdk",
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentProviderError(
            f"{name} provider: invalid configuration: {exc}", reason="invalid_config"
        ) from exc
    raise PermanentProviderError(
        f"unknown provider {name!r}; built-in providers: {', '.join(PROVIDER_NAMES)}",
        reason="unknown_provider",
    )
