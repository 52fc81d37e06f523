"""The local CA, issued certificates, and TLS file loading with reload on change."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.cli.main import main
from controller.security import certs
from controller.security.errors import CertificateError
from controller.security.identity import Role, identity_from_uris
from controller.security.tls import CertificateReloader, TlsFiles, server_credentials


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _uris(cert: x509.Certificate) -> list[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def test_keys_are_private_and_the_ca_is_not_replaced(ca: Path) -> None:
    assert stat.S_IMODE(os.stat(ca / "ca.key").st_mode) == 0o600
    assert _load(ca / "ca.pem").extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(CertificateError, match="already holds a CA"):
        certs.init_ca(ca)


@pytest.mark.parametrize("role", [Role.AGENT, Role.OPERATOR, Role.AUDITOR])
def test_client_certificates_carry_one_identity_uri(ca: Path, tmp_path: Path, role: Role) -> None:
    files = certs.issue(ca, role, "i-1", out=tmp_path / "out")
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    cert = _load(files.cert)
    assert _uris(cert) == [f"spiffe://corral/{role}/i-1"]
    assert identity_from_uris(_uris(cert)) is not None
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert files.chain.read_bytes() == files.cert.read_bytes() + (ca / "ca.pem").read_bytes()
    assert files.ca.read_bytes() == (ca / "ca.pem").read_bytes()
    cert.verify_directly_issued_by(_load(ca / "ca.pem"))


def test_controller_certificates_name_the_addresses_clients_dial(ca: Path) -> None:
    default = _load(certs.issue(ca, Role.CONTROLLER, "c1").cert)
    sans = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    given = certs.issue(ca, Role.CONTROLLER, "c2", sans=["ctl.example.com", "IP:10.0.0.5"])
    sans = _load(given.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ctl.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    usage = _load(given.cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in list(usage)


def test_bad_requests_are_refused(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="only for controller"):
        certs.issue(ca, Role.AGENT, "i-1", sans=["host"])
    with pytest.raises(CertificateError, match="not a valid"):
        certs.issue(ca, Role.AGENT, "../etc")
    with pytest.raises(CertificateError, match="reserved prefix"):
        certs.issue(ca, Role.OPERATOR, "unverified:alice")
    with pytest.raises(CertificateError, match="neither a host name nor an IP"):
        certs.issue(ca, Role.CONTROLLER, "c", sans=["IP:not-an-ip"])
    with pytest.raises(CertificateError, match="no CA in"):
        certs.issue(tmp_path / "nowhere", Role.AGENT, "i-1")


def test_validity_can_be_set_in_the_past(ca: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = _load(
        certs.issue(ca, Role.AGENT, "old", not_after=now - datetime.timedelta(hours=1)).cert
    )
    assert expired.not_valid_after_utc < now
    assert expired.not_valid_before_utc < expired.not_valid_after_utc
    fresh = _load(certs.issue(ca, Role.AGENT, "new", days=7).cert)
    assert fresh.not_valid_after_utc - now > datetime.timedelta(days=6)


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path / "ca"), "--days", "30"]) == 0
    code = main(
        ["certs", "issue", "--dir", str(tmp_path / "ca"), "--role", "operator", "--name", "alice"]
    )
    assert code == 0
    assert "spiffe://corral/operator/alice" in capsys.readouterr().out
    assert (tmp_path / "ca" / "operator-alice.key").exists()
    assert main(["certs", "init", str(tmp_path / "ca")]) == 2
    assert "already holds a CA" in capsys.readouterr().err


def test_tls_files_come_all_together() -> None:
    assert TlsFiles.from_env({}) is None
    env = {"CORRAL_TLS_CA_FILE": "a", "CORRAL_TLS_CERT_FILE": "b", "CORRAL_TLS_KEY_FILE": "c"}
    assert TlsFiles.from_env(env) == TlsFiles("a", "b", "c")
    with pytest.raises(CertificateError, match="needs all of"):
        TlsFiles.from_env({"CORRAL_TLS_CA_FILE": "a"})


def test_a_certificate_and_a_key_that_do_not_match_are_refused(ca: Path) -> None:
    one = certs.issue(ca, Role.CONTROLLER, "one")
    two = certs.issue(ca, Role.CONTROLLER, "two")
    with pytest.raises(CertificateError, match="does not match"):
        server_credentials(TlsFiles(str(one.ca), str(one.chain), str(two.key)), reload=False)
    with pytest.raises(CertificateError, match="cannot read TLS file"):
        server_credentials(TlsFiles(str(one.ca), str(one.chain), "/nonexistent"), reload=False)


def test_the_reloader_rereads_only_changed_and_matching_files(ca: Path, tmp_path: Path) -> None:
    files = certs.issue(ca, Role.CONTROLLER, "c1", out=tmp_path / "live")
    reloader = CertificateReloader(TlsFiles(str(files.ca), str(files.chain), str(files.key)))
    reloader.initial()
    assert reloader() is None  # unchanged
    # Rotation half done: a new certificate beside the old key keeps the old pair.
    staged = certs.issue(ca, Role.CONTROLLER, "c1", out=tmp_path / "staged")
    files.chain.write_bytes(staged.chain.read_bytes())
    assert reloader() is None
    assert reloader.failures == 1
    files.key.write_bytes(staged.key.read_bytes())
    assert reloader() is not None
    assert reloader.reloads == 1
    assert reloader() is None
    files.key.unlink()  # briefly missing during a rotation: keep serving
    assert reloader() is None
