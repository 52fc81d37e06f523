"""The rule for plaintext: loopback only, unless the operator says ``--insecure`` out loud.

A controller listening on a reachable address without TLS would accept reports
and operator commands from anyone on the network, so :func:`check_listen`
refuses that at start-up. ``--insecure`` overrides it, for a private test
network; the returned warning must then be logged at WARNING on every start.
Pure: the address is judged by its text (``localhost`` and loopback literals are
local; any other name could resolve anywhere and counts as remote).
"""

from __future__ import annotations

import ipaddress

from controller.errors import ConfigError

INSECURE_WARNING = (
    "INSECURE: serving {address} WITHOUT TLS on a non-loopback address (--insecure). "
    "Anyone who can reach it can send reports and operator commands. "
    "Configure tls_ca_file, tls_cert_file and tls_key_file for production."
)


def host_of(address: str) -> str:
    """The host part of ``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` (returned whole)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    if address.startswith("["):
        host, _, _ = address[1:].partition("]")
        return host
    host, _, _ = address.rpartition(":")
    return host


def is_loopback(address: str) -> bool:
    """True when only this machine can connect to ``address``."""
    host = host_of(address)
    if host.startswith(("unix:", "unix-abstract:")):
        return True
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, or "" (every interface)


def check_listen(address: str, *, tls_configured: bool, insecure: bool) -> str | None:
    """Decide whether the controller may serve ``address`` as configured.

    Returns None when it may silently, a warning text to log when it may only
    because of ``insecure``; raises ConfigError when it must refuse to start.
    """
    if tls_configured or is_loopback(address):
        return None
    if insecure:
        return INSECURE_WARNING.format(address=address)
    raise ConfigError(
        f"refusing to serve {address} without TLS: it is not a loopback address. "
        "Set tls_ca_file, tls_cert_file and tls_key_file (see 'corral certs'), "
        "listen on 127.0.0.1, or pass --insecure on a network you trust."
    )
