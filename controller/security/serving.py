"""Plugs security into a ``grpc.aio`` server: the listening port and the interceptor.

:class:`ServerSecurity` is the whole configuration (TLS files, ``--insecure``,
trust domain, per-role rates); :func:`server_interceptors` returns what to pass
to ``grpc.aio.server(interceptors=...)``, and
:func:`bind` adds the port, TLS or plaintext, after applying the
loopback-or-TLS rule. Without TLS there is no identity to check, so no
security interceptor is installed and :func:`~.interceptor.current_identity`
is None.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc.aio import ServerInterceptor

from controller.config import ControllerConfig
from controller.errors import ConfigError
from controller.security.identity import DEFAULT_TRUST_DOMAIN, Role, check_trust_domain
from controller.security.interceptor import OnRefused, SecurityInterceptor
from controller.security.listen import check_listen
from controller.security.ratelimit import Rate, RateLimiter
from controller.security.tls import TlsFiles, server_credentials

log = logging.getLogger("corral.security")

#: An agent reports every 30 s or so; a burst covers an outbox drained after an outage.
DEFAULT_RATES: dict[Role, Rate] = {
    Role.AGENT: Rate(per_second=2.0, burst=60.0),
    Role.OPERATOR: Rate(per_second=20.0, burst=200.0),
    Role.AUDITOR: Rate(per_second=20.0, burst=200.0),
}


@dataclass(frozen=True)
class ServerSecurity:
    """How the controller's gRPC listener is protected."""

    tls: TlsFiles | None = None
    #: Allow plaintext on a non-loopback address (logged loudly at every start).
    insecure: bool = False
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    rates: dict[Role, Rate] = field(default_factory=lambda: dict(DEFAULT_RATES))
    #: Re-read the certificate files when they change (rotation without restart).
    reload: bool = True
    #: How many identities' buckets are remembered per role.
    max_identities: int = 100_000

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)


def security_from_config(config: ControllerConfig) -> ServerSecurity:
    """The listener's protection as ``config`` says; ConfigError for unusable settings.

    Raises CertificateError when only some of the three TLS files are named.
    """
    tls = TlsFiles.from_values(
        config.tls_ca_file or None,
        config.tls_cert_file or None,
        config.tls_key_file or None,
    )
    try:
        agent = Rate(per_second=config.agent_rate, burst=float(config.agent_burst))
        return ServerSecurity(
            tls=tls,
            insecure=config.insecure,
            trust_domain=config.trust_domain,
            rates={**DEFAULT_RATES, Role.AGENT: agent},
        )
    except ValueError as exc:
        raise ConfigError(f"security settings: {exc}") from None


def server_interceptors(
    security: ServerSecurity,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_refused: OnRefused | None = None,
) -> list[ServerInterceptor]:
    """The interceptors to add; none when the server has no TLS.

    ``on_refused`` is told of each call the interceptor refuses (method, code).
    """
    if security.tls is None:
        return []
    limiters = {
        role: RateLimiter(rate, clock=clock, max_identities=security.max_identities)
        for role, rate in security.rates.items()
    }
    return [
        SecurityInterceptor(
            trust_domain=security.trust_domain, limiters=limiters, on_refused=on_refused
        )
    ]


def bind(server: grpc.aio.Server, listen: str, security: ServerSecurity) -> int:
    """Add ``listen`` to ``server`` as ``security`` says; return the bound port.

    Raises ConfigError (plaintext off loopback without ``insecure``),
    CertificateError (unusable TLS files) or OSError (cannot bind).
    """
    warning = check_listen(
        listen, tls_configured=security.tls is not None, insecure=security.insecure
    )
    if warning is not None:
        log.warning(warning)
    if security.tls is None:
        port = server.add_insecure_port(listen)
    else:
        credentials = server_credentials(security.tls, reload=security.reload)
        port = server.add_secure_port(listen, credentials)
    if not port:
        raise OSError(f"cannot listen on {listen}")
    return port
