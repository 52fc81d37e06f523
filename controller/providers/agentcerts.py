"""Certificates for the agents the controller itself launches (local and docker providers).

With mutual TLS the controller refuses a report from an agent that presents no
certificate naming its instance. An agent the controller starts on this host
has no provisioning system to hand it one, so the provider issues it: from the
CA directory ``corral certs init`` created (``agent_ca_dir``), one short-lived
certificate per instance for ``spiffe://<trust-domain>/agent/<instance-id>``,
written into the instance's data directory (``STATE/tls/``, key mode 0600)
and given to the agent as ``CORRAL_AGENT_TLS_CA_FILE``/``CERT_FILE``/``KEY_FILE``.

Idempotent: a retried launch or an agent restart reuses the certificate while
it names the instance and has more than a tenth of its validity left.
Certificates are issued into a staging directory that is renamed into place,
so a crash never leaves a key beside another key's certificate. Key material
is never logged. The ``cryptography`` package (the ``tls`` extra) is imported
only when a CA directory is configured.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from controller.providers.errors import PermanentProviderError
from controller.security.errors import CertificateError
from controller.security.identity import DEFAULT_TRUST_DOMAIN, Identity, Role

TLS_DIR = "tls"
DEFAULT_DAYS = 30
_ENV = ("CORRAL_AGENT_TLS_CA_FILE", "CORRAL_AGENT_TLS_CERT_FILE", "CORRAL_AGENT_TLS_KEY_FILE")

log = logging.getLogger("corral.providers.agentcerts")


@dataclass(frozen=True)
class AgentTlsFiles:
    """Where one agent's CA bundle, certificate chain and key are."""

    ca_file: str
    cert_file: str
    key_file: str

    def env(self) -> dict[str, str]:
        """The agent's ``CORRAL_AGENT_TLS_*`` variables naming these files."""
        return dict(zip(_ENV, (self.ca_file, self.cert_file, self.key_file), strict=True))


@dataclass(frozen=True)
class AgentCertificates:
    """Issues each launched agent a certificate for exactly its instance."""

    ca_dir: str
    """A directory made by ``corral certs init``: ``ca.key`` and ``ca.pem``."""
    days: int = DEFAULT_DAYS
    """Validity of each agent certificate."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def check(self) -> None:
        """Fail at start-up, not at the first launch, when the CA cannot be used.

        Raises PermanentProviderError for a missing CA, a bad ``days`` or a
        missing ``cryptography`` package.
        """
        if self.days <= 0:
            raise PermanentProviderError(
                f"agent_cert_days must be positive (got {self.days})", reason="invalid_config"
            )
        _require_tls_extra()
        from controller.security.certs import CA_CERT, CA_KEY  # noqa: PLC0415

        for name in (CA_KEY, CA_CERT):
            if not os.path.isfile(os.path.join(self.ca_dir, name)):
                raise PermanentProviderError(
                    f"agent_ca_dir {self.ca_dir} holds no {name}; "
                    f"create the CA with 'corral certs init {self.ca_dir}'",
                    reason="invalid_config",
                )

    def ensure(
        self, instance_id: str, data_dir: str, *, now: datetime.datetime | None = None
    ) -> AgentTlsFiles:
        """The instance's certificate files in ``data_dir/tls``, issued if needed.

        Raises PermanentProviderError when the CA cannot sign (missing, unreadable).
        """
        _require_tls_extra()
        from controller.security.certs import issue  # noqa: PLC0415

        moment = now or datetime.datetime.now(datetime.UTC)
        target = os.path.abspath(os.path.join(data_dir, TLS_DIR))
        files = _files(target, instance_id)
        if self._reusable(files, instance_id, moment):
            return files
        staging = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            issued = issue(
                Path(self.ca_dir),
                Role.AGENT,
                instance_id,
                days=self.days,
                out=Path(staging),
                trust_domain=self.trust_domain,
                now=moment,
            )
            os.chmod(staging, 0o700)
            if os.path.lexists(target):
                shutil.rmtree(target)
            os.rename(staging, target)
        except (CertificateError, OSError) as exc:
            raise PermanentProviderError(
                f"cannot issue the agent certificate for {instance_id}: {exc}",
                reason="agent_certificate_failed",
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "issued an agent certificate",
            extra={
                "instance_id": instance_id,
                "cert_file": os.path.join(target, issued.chain.name),
                "days": self.days,
            },
        )
        return files

    def _reusable(self, files: AgentTlsFiles, instance_id: str, now: datetime.datetime) -> bool:
        from controller.security.certs import read_certificate  # noqa: PLC0415

        if not all(os.path.isfile(path) for path in (files.ca_file, files.key_file)):
            return False
        try:
            info = read_certificate(Path(files.cert_file))
        except CertificateError:
            return False
        wanted = Identity(Role.AGENT, instance_id).uri(self.trust_domain)
        margin = (info.not_after - info.not_before) / 10
        return info.uris == (wanted,) and info.not_before <= now < info.not_after - margin


def discard(data_dir: str) -> None:
    """Remove an instance's issued certificate and key (the instance is gone)."""
    shutil.rmtree(os.path.join(data_dir, TLS_DIR), ignore_errors=True)


def _files(directory: str, instance_id: str) -> AgentTlsFiles:
    stem = f"{Role.AGENT}-{instance_id}"
    return AgentTlsFiles(
        ca_file=os.path.join(directory, "ca.pem"),
        cert_file=os.path.join(directory, f"{stem}.chain.crt"),
        key_file=os.path.join(directory, f"{stem}.key"),
    )


def _require_tls_extra() -> None:
    """PermanentProviderError when ``cryptography`` (the ``tls`` extra) is missing."""
    try:
        import cryptography  # noqa: F401, PLC0415 - optional dependency
    except ImportError as exc:
        raise PermanentProviderError(
            f"agent_ca_dir needs the {exc.name} package: pip install 'corral[tls]'",
            reason="missing_sdk",
        ) from exc
