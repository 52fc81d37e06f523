"""gRPC credentials from PEM files, with the server's certificate reloaded as files change.

The controller requires client certificates signed by ``ca_file``
(``require_client_authentication``); clients (operator CLI, tests) present
theirs. Certificates rotate without a restart: gRPC asks
:class:`CertificateReloader` for a fresh configuration at every new TLS
handshake, and it re-reads the three files only when their size or mtime
changed. A half-rotated pair (new certificate, old key) is not taken: the old
one keeps serving until the pair matches again. File contents are only ever
handed to gRPC; neither paths' contents nor keys are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import grpc

from controller.security.errors import CertificateError

log = logging.getLogger("corral.security")

#: (mtime_ns, size) of ca, cert and key: what "the files changed" compares.
Signature = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA bundle, the certificate chain and the private key (PEM)."""

    ca_file: str
    cert_file: str
    key_file: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, prefix: str = "CORRAL_TLS_") -> TlsFiles | None:
        """``<prefix>CA_FILE``, ``CERT_FILE``, ``KEY_FILE`` from ``env``; None if none is set.

        Raises CertificateError when only some are set.
        """
        values = [
            env.get(f"{prefix}{name}") or None for name in ("CA_FILE", "CERT_FILE", "KEY_FILE")
        ]
        return cls.from_values(*values, source="environment")

    @classmethod
    def from_values(
        cls,
        ca_file: str | None,
        cert_file: str | None,
        key_file: str | None,
        *,
        source: str = "configuration",
    ) -> TlsFiles | None:
        """All three paths, or None when none is given; CertificateError for a partial set."""
        given = [ca_file, cert_file, key_file]
        if not any(given):
            return None
        if ca_file is None or cert_file is None or key_file is None:
            raise CertificateError(
                f"{source}: mutual TLS needs all of the CA, certificate and key files"
            )
        return cls(ca_file, cert_file, key_file)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The CA, chain and key bytes; CertificateError naming the unreadable path."""
        return _read(self.ca_file), _read(self.cert_file), _read(self.key_file)

    def signature(self) -> Signature:
        """What changes when any of the files is rewritten (OSError if one is missing)."""
        stats = [os.stat(path) for path in (self.ca_file, self.cert_file, self.key_file)]
        return tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials for a client that verifies the controller and presents its own certificate."""
    ca, chain, key = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )


def server_credentials(files: TlsFiles, *, reload: bool = True) -> grpc.ServerCredentials:
    """Server credentials requiring a client certificate signed by ``files.ca_file``.

    With ``reload`` the files are watched (see :class:`CertificateReloader`).
    Raises CertificateError when the files cannot be read or do not match.
    """
    if not reload:
        ca, chain, key = files.read()
        _check_pair(chain, key, where=files.cert_file)
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=ca, require_client_auth=True
        )
    reloader = CertificateReloader(files)
    # gRPC documents None as "keep the current configuration"; its stubs omit it.
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], reloader)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial(), fetcher, require_client_authentication=True
    )


class CertificateReloader:
    """The certificate-configuration fetcher gRPC calls before each TLS handshake."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.reloads = 0
        self.failures = 0
        self._signature: Signature = ()

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The configuration to start with; raises CertificateError (fail at start-up)."""
        try:
            signature = self.files.signature()
        except OSError as exc:
            raise CertificateError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        configuration = self._load()
        self._signature = signature
        return configuration

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration if the files changed and are usable, else None (keep serving)."""
        try:
            signature = self.files.signature()
        except OSError:
            return None  # mid-rotation: a file is briefly missing; keep the current pair
        if signature == self._signature:
            return None
        try:
            configuration = self._load()
        except CertificateError as exc:
            self.failures += 1
            log.warning("TLS files changed but cannot be used yet; keeping the old ones: %s", exc)
            return None
        self._signature = signature
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"cert_file": self.files.cert_file})
        return configuration

    def _load(self) -> grpc.ServerCertificateConfiguration:
        ca, chain, key = self.files.read()
        _check_pair(chain, key, where=self.files.cert_file)
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CertificateError(f"cannot read TLS file {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise CertificateError(f"TLS file {path} holds no PEM block")
    return data


def _check_pair(chain: bytes, key: bytes, *, where: str) -> None:
    """CertificateError unless the chain's first certificate belongs to ``key``.

    Checked with ``cryptography`` when it is installed (the ``tls`` extra);
    without it, gRPC's own check at the first handshake is the only one.
    """
    try:
        from cryptography import x509  # noqa: PLC0415 - optional dependency
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    except ImportError:
        return
    try:
        certificate = x509.load_pem_x509_certificate(chain)
        private = serialization.load_pem_private_key(key, password=None)
    except ValueError as exc:
        raise CertificateError(f"{where}: cannot parse certificate or key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if certificate.public_key().public_bytes(encoding, public) != private.public_key().public_bytes(
        encoding, public
    ):
        raise CertificateError(f"{where}: the certificate does not match the private key")
