"""Who is calling, read from the peer's certificate and nothing else.

A corral identity is one URI SAN in the client certificate, in SPIFFE form::

    spiffe://<trust-domain>/agent/<instance-id>
    spiffe://<trust-domain>/operator/<name>
    spiffe://<trust-domain>/auditor/<name>
    spiffe://<trust-domain>/controller/<name>

The trust domain is ``corral`` for certificates from ``corral certs``; a
deployment with its own PKI configures its own. A certificate must carry exactly
one URI SAN in the trust domain (as SPIFFE requires of an X.509-SVID); none, or
two that disagree, is no identity at all. Everything here is pure: it reads the
property map gRPC's TLS stack hands over (``peer_uri`` holds the verified
certificate's URI SANs), so it is tested without a server.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_TRUST_DOMAIN = "corral"
#: The auth-context property holding the peer certificate's URI SANs.
PEER_URI = "peer_uri"

#: Instance ids as the controller accepts them; names of people and controllers likewise.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: Name prefixes no certificate may carry: an actor built from such a name could be
#: mistaken for an unauthenticated claim or another role (``operator:unverified:x``).
RESERVED_PREFIXES = ("unverified:", "agent:", "operator:", "auditor:", "controller:")


def is_reserved(name: str) -> bool:
    """True when ``name`` starts with a reserved prefix (any letter case)."""
    return name.lower().startswith(RESERVED_PREFIXES)


_TRUST_DOMAIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,254}")


class Role(enum.StrEnum):
    """What a certificate's holder is; decides which RPCs it may call."""

    AGENT = "agent"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    CONTROLLER = "controller"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: its role and its name (the instance id for an agent)."""

    role: Role
    name: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"{self.name[:80]!r} is not a valid {self.role} name")
        if is_reserved(self.name):
            raise ValueError(
                f"{self.name[:80]!r} starts with a reserved prefix ({', '.join(RESERVED_PREFIXES)})"
            )

    @property
    def actor(self) -> str:
        """How audit records and logs name the caller: ``operator:alice``, ``agent:i-1``."""
        return f"{self.role}:{self.name}"

    def uri(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
        """The URI SAN a certificate for this identity carries."""
        return f"spiffe://{trust_domain}/{self.role}/{self.name}"


def check_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name; else ValueError."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"{trust_domain!r} is not a valid trust domain (lower-case DNS-like name)")
    return trust_domain


def parse_uri(uri: str, *, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Identity | None:
    """The identity ``uri`` names, or None if it is not a corral URI of ``trust_domain``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.scheme != "spiffe" or parts.netloc != trust_domain:
        return None
    if parts.query or parts.fragment or "%" in parts.path:
        return None
    segments = parts.path.split("/")
    if len(segments) != 3 or segments[0] != "":
        return None
    _, role_name, name = segments
    try:
        role = Role(role_name)
    except ValueError:
        return None
    if not _NAME.fullmatch(name) or is_reserved(name):
        return None
    return Identity(role, name)


def identity_from_uris(
    uris: Iterable[str], *, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> Identity | None:
    """The one identity among a certificate's URI SANs, or None (no corral URI, or several)."""
    found: set[Identity] = set()
    for uri in uris:
        if not uri.startswith(f"spiffe://{trust_domain}/"):
            continue
        identity = parse_uri(uri, trust_domain=trust_domain)
        if identity is None:
            return None  # a malformed URI in our own trust domain: trust nothing
        found.add(identity)
    return found.pop() if len(found) == 1 else None


def identity_from_auth_context(
    auth_context: Mapping[str, Iterable[bytes]], *, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> Identity | None:
    """The caller's identity from ``context.auth_context()``; None when unauthenticated.

    gRPC fills ``peer_uri`` only after it verified the client certificate against
    the configured CA, so a plaintext or anonymous peer yields None.
    """
    values = auth_context.get(PEER_URI) or ()
    uris: list[str] = []
    for value in values:
        try:
            uris.append(value.decode("ascii"))
        except UnicodeDecodeError:
            return None
    return identity_from_uris(uris, trust_domain=trust_domain)
