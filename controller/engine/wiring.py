"""Builds the replacement engine from the controller's settings: providers, knobs, address.

Kept apart from :mod:`controller.app` so the wiring of providers (which may
import an SDK) stays in one small place. The ``local`` provider is always
available; with no ``[providers.local]`` table it keeps its instances and
artifacts in the controller's data directory (``DATA/instances``,
``DATA/artifacts``), which is what ``corral demo`` uses. With mutual TLS, a
provider table's ``agent_ca_dir`` makes the agents it starts carry their own
certificate (:mod:`controller.providers.agentcerts`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from controller.config import ControllerConfig
from controller.domain.breaker import BreakerSettings
from controller.domain.replacement import ReplacementSettings
from controller.engine.replacer import Replacer, ReplacerSettings
from controller.engine.reports import ControllerService
from controller.providers import AGENT_CERT_KEYS, Provider, create_provider

log = logging.getLogger("corral.replacer")


def engine_settings(config: ControllerConfig) -> ReplacementSettings:
    """The engine's knobs from the config (defaults are the safe ones)."""
    return ReplacementSettings(
        startup_grace_seconds=config.startup_grace,
        backoff_base_seconds=config.backoff_base,
        max_attempts=config.max_attempts,
        breaker=BreakerSettings(
            threshold=config.breaker_threshold, window_seconds=config.breaker_window
        ),
    )


def build_providers(config: ControllerConfig) -> dict[str, Provider]:
    """Every configured provider by name, plus ``local`` on the data directory by default.

    Raises PermanentProviderError for a bad table or a missing SDK.
    """
    tables: dict[str, dict[str, Any]] = {name: dict(items) for name, items in config.providers}
    for name, table in tables.items():
        _check_agent_certificates(config, name, table)
    tables.setdefault("local", {})
    tables["local"].setdefault("data_dir", config.data_dir)
    return {
        name: create_provider(name, table, trust_domain=config.trust_domain)
        for name, table in sorted(tables.items())
    }


def _check_agent_certificates(config: ControllerConfig, name: str, table: dict[str, Any]) -> None:
    """Agents get certificates only from a controller that asks for them; warn on a mismatch.

    Without TLS, an agent with a certificate would dial a plaintext listener
    with TLS and never be heard, so ``agent_ca_dir`` is dropped. With TLS, a
    provider that starts agents without certificates launches instances that
    can never report.
    """
    tls = bool(config.tls_ca_file)
    if not tls and any(key in table for key in AGENT_CERT_KEYS):
        log.warning(
            "[providers.%s] agent_ca_dir is ignored: the controller serves without TLS", name
        )
        for key in AGENT_CERT_KEYS:
            table.pop(key, None)
    starts_agents = name == "local" or (name == "docker" and bool(table.get("agent_command")))
    if tls and starts_agents and not table.get("agent_ca_dir"):
        log.warning(
            "[providers.%s] starts agents without certificates, but the controller requires "
            "mutual TLS: their reports will be refused; set agent_ca_dir (docs/security.md)",
            name,
        )


def controller_address(config: ControllerConfig, port: int) -> str:
    """Where launched agents report: ``advertise``, else the listen host and the bound port."""
    if config.advertise:
        return config.advertise
    host = config.listen.rpartition(":")[0] or "127.0.0.1"
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def build_replacer(config: ControllerConfig, service: ControllerService, *, port: int) -> Replacer:
    """The replacer for ``service``'s store (not started)."""
    return Replacer(
        service.store,
        clock=service.clock,
        metrics=service.metrics,
        providers=build_providers(config),
        controller_address=controller_address(config, port),
        settings=ReplacerSettings(
            tick_seconds=config.replacer_interval,
            sweep_seconds=config.replacer_sweep_interval,
            engine=replace(engine_settings(config), listening_since=service.listening_since),
        ),
    )
