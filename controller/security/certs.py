"""A local certificate authority for a quick start with mutual TLS.

``init_ca`` creates a CA key and a self-signed CA certificate; ``issue`` signs a
certificate for one identity (see :mod:`.identity` for the URI SAN scheme).
Real deployments bring their own PKI (docs/security.md says which SANs to
issue); this module exists so that a laptop, a demo or a test can run with real
certificates in one command.

Keys are ECDSA P-256, written with mode 0600 through a temporary file and an
atomic rename, so a controller watching the files never reads half a key.
Needs the ``cryptography`` package (the ``tls`` extra), as do the agent-certificate
issuer (:mod:`controller.providers.agentcerts`) and the certificate checks of
:mod:`controller.security.tls`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.security.errors import CertificateError
from controller.security.identity import DEFAULT_TRUST_DOMAIN, Identity, Role

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
#: Names a controller certificate answers to when no ``--san`` is given.
DEFAULT_SERVER_SANS = ("localhost", "127.0.0.1", "::1")
_SKEW = datetime.timedelta(minutes=5)

SanValue = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class IssuedFiles:
    """Where ``issue`` wrote the key, the certificate and the chain (certificate + CA)."""

    key: Path
    cert: Path
    chain: Path
    ca: Path


def init_ca(
    directory: Path,
    *,
    days: int = 3650,
    common_name: str = "corral local CA",
    now: datetime.datetime | None = None,
) -> Path:
    """Create ``ca.key`` (0600) and ``ca.pem`` in ``directory``; return the certificate path.

    Raises CertificateError if a CA already exists there (it would orphan every
    certificate it signed) or ``days`` is not positive.
    """
    if days <= 0:
        raise CertificateError(f"days must be positive (got {days})")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
        raise CertificateError(f"{directory} already holds a CA; refusing to replace it")
    start = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(start - _SKEW)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), mode=0o600)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return directory / CA_CERT


def issue(
    directory: Path,
    role: Role,
    name: str,
    *,
    days: int = 365,
    out: Path | None = None,
    sans: Sequence[str] = (),
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    now: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> IssuedFiles:
    """Sign a certificate for ``role``/``name`` with the CA in ``directory``.

    Writes ``<role>-<name>.key`` (0600), ``.crt`` and ``.chain.crt`` into ``out``
    (default ``directory``) and a copy of the CA certificate as ``ca.pem``.
    ``sans`` (host names or IP addresses) are only allowed for a controller,
    which gets ``localhost`` and the loopback addresses when none are given.
    ``not_after`` overrides ``days`` (tests issue already-expired certificates).
    Raises CertificateError for a missing CA, a bad name or SAN.
    """
    try:
        identity = Identity(Role(role), name)
    except ValueError as exc:
        raise CertificateError(str(exc)) from None
    if sans and identity.role is not Role.CONTROLLER:
        raise CertificateError("--san is only for controller certificates")
    if not_after is None and days <= 0:
        raise CertificateError(f"days must be positive (got {days})")
    ca_key, ca_cert = _load_ca(directory)
    start = now or datetime.datetime.now(datetime.UTC)
    end = not_after or start + datetime.timedelta(days=days)
    begin = min(start - _SKEW, end - datetime.timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri(trust_domain))]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.role is Role.CONTROLLER:
        names.extend(_san(value) for value in (sans or DEFAULT_SERVER_SANS))
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(identity.role)),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.name[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(begin)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    target = out or directory
    target.mkdir(parents=True, exist_ok=True)
    stem = f"{identity.role}-{identity.name}"
    leaf = cert.public_bytes(serialization.Encoding.PEM)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    files = IssuedFiles(
        key=target / f"{stem}.key",
        cert=target / f"{stem}.crt",
        chain=target / f"{stem}.chain.crt",
        ca=target / CA_CERT,
    )
    _write(files.key, _key_pem(key), mode=0o600)
    _write(files.cert, leaf, mode=0o644)
    _write(files.chain, leaf + ca_pem, mode=0o644)
    if files.ca != directory / CA_CERT:
        _write(files.ca, ca_pem, mode=0o644)
    return files


@dataclass(frozen=True)
class CertificateInfo:
    """What a certificate says about itself: its URI SANs and its validity window."""

    uris: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime


def read_certificate(path: Path) -> CertificateInfo:
    """The URI SANs and validity of the first certificate in ``path`` (PEM).

    Raises CertificateError when the file cannot be read or parsed.
    """
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CertificateError(f"{path} holds no usable certificate: {exc}") from None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(names.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return CertificateInfo(
        uris=uris, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc
    )


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key_pem = (directory / CA_KEY).read_bytes()
        cert_pem = (directory / CA_CERT).read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"no CA in {directory} ({exc.strerror}); run 'corral certs init {directory}'"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"the CA in {directory} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the CA key in {directory} is not an EC key")
    return key, cert


def _san(value: str) -> SanValue:
    kind, _, rest = value.partition(":")
    if kind.upper() == "DNS" and rest:
        return x509.DNSName(rest)
    text = rest if kind.upper() == "IP" and rest else value
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if kind.upper() == "IP" or not text or any(c.isspace() or c in "/@" for c in text):
        raise CertificateError(f"--san {value!r} is neither a host name nor an IP address")
    return x509.DNSName(text)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _serial() -> int:
    return secrets.randbits(159) | 1


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a sibling temporary file with ``mode``, then rename over ``path``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
