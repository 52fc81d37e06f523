"""Secret warnings: each kind of secret is named with its path and reason; ordinary files never."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.image.bake import bake
from agent.image.secrets import PEEK_BYTES, SecretsFoundError, find_secrets
from agent.manifest.policy import Policy
from agent.scan.scanner import scan

PEM_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
)
RSA_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
OPENSSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
CERT = "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----\n"


def _warnings(tmp_path: Path, files: dict[str, str]) -> dict[str, str]:
    root = tmp_path / "root"
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = scan(str(root), Policy())
    return {os.fsdecode(w.path): w.kind for w in find_secrets(str(root), result.entries)}


@pytest.mark.parametrize(
    ("path", "text", "kind"),
    [
        ("/etc/ssl/private/server.key", PEM_KEY, "private_key"),
        ("/etc/ssl/private/site.pem", CERT + RSA_KEY, "private_key"),
        ("/root/.ssh/id_ed25519", OPENSSH_KEY, "private_key"),
        ("/home/ann/.ssh/id_rsa", RSA_KEY, "private_key"),
        ("/opt/app/tls_key", PEM_KEY, "private_key"),
        ("/etc/ssh/ssh_host_ed25519_key", OPENSSH_KEY, "ssh_host_key"),
        ("/etc/ssh/ssh_host_rsa_key", RSA_KEY, "ssh_host_key"),
        ("/root/.aws/credentials", "[default]\naws_secret_access_key = abc\n", "cloud_credentials"),
        (
            "/root/.config/gcloud/application_default_credentials.json",
            '{"type": "authorized_user", "refresh_token": "1//x"}',
            "cloud_credentials",
        ),
        (
            "/home/ann/.config/gcloud/legacy_credentials.json",
            '{"client_secret": "x"}',
            "cloud_credentials",
        ),
        ("/root/.azure/msal_token_cache.json", '{"AccessToken": {}}', "cloud_credentials"),
        ("/root/.azure/accessTokens.json", '[{"accessToken": "x"}]', "cloud_credentials"),
        (
            "/root/.docker/config.json",
            '{"auths": {"registry.example.com": {"auth": "dXNlcjpwYXNz"}}}',
            "docker_credentials",
        ),
        (
            "/root/.kube/config",
            "users:\n- name: admin\n  user:\n    token: eyJhbGciOi\n",
            "kube_credentials",
        ),
        (
            "/root/.kube/config",
            "users:\n- name: admin\n  user:\n    client-key-data: LS0tLS1CRUdJTi\n",
            "kube_credentials",
        ),
        ("/root/.netrc", "machine example.com login ann password hunter2\n", "netrc"),
        ("/var/lib/postgresql/.pgpass", "db:5432:app:app:hunter2\n", "pgpass"),
        ("/srv/app/.env", "DEBUG=1\nDATABASE_PASSWORD=hunter2\n", "dotenv"),
        ("/srv/app/.env", "export API_KEY='abc123'\n", "dotenv"),
        ("/srv/app/.env.production", 'AWS_SECRET_ACCESS_KEY="x"\n', "dotenv"),
        ("/srv/app/.env", "GITHUB_TOKEN=ghp_abc\n", "dotenv"),
    ],
)
def test_each_kind_is_warned(tmp_path: Path, path: str, text: str, kind: str) -> None:
    assert _warnings(tmp_path, {path: text}) == {path: kind}


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/etc/nginx/nginx.conf", "server { listen 80; ssl_certificate_key /run/key.pem; }\n"),
        ("/etc/app/config.toml", 'password_file = "/run/secrets/db"\napi_key_env = "API_KEY"\n'),
        ("/etc/ssl/certs/ca.pem", CERT),
        ("/home/ann/.ssh/id_ed25519.pub", "ssh-ed25519 AAAAC3Nza ann@host\n"),
        ("/etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAAC3Nza root@host\n"),
        ("/etc/ssh/sshd_config", "PermitRootLogin no\nHostKey /etc/ssh/ssh_host_rsa_key\n"),
        ("/usr/share/doc/x/id_rsa", "not a key, documentation\n"),
        ("/srv/app/.env", "DEBUG=1\nPORT=8080\nKEYBOARD_LAYOUT=us\n"),
        ("/srv/app/.env", "DATABASE_PASSWORD=\nAPI_KEY=''\n"),
        ("/srv/app/.env", "API_TOKEN=${API_TOKEN}\nPUBLIC_KEY_URL=https://x\n"),
        ("/srv/app/.env.example", "DATABASE_PASSWORD=changeme\n"),
        ("/root/.docker/config.json", '{"auths": {}, "credsStore": "pass"}\n'),
        ("/root/.kube/config", "clusters:\n- name: c\n  cluster:\n    server: https://k\n"),
        ("/root/.aws/credentials", ""),
        ("/root/.aws/config", "[default]\nregion = eu-west-1\n"),
        ("/root/.netrc", "machine example.com login ann\n"),
        ("/root/.pgpass", "# host:port:db:user:password\n"),
        ("/root/.azure/azureProfile.json", '{"subscriptions": []}'),
    ],
)
def test_ordinary_files_are_not_warned(tmp_path: Path, path: str, text: str) -> None:
    assert _warnings(tmp_path, {path: text}) == {}


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "keys").mkdir(parents=True)
    os.mkfifo(root / "keys" / "id_rsa")  # opening a FIFO would hang
    os.mkfifo(root / ".env")
    (root / "real.key").write_text(PEM_KEY)
    os.symlink("real.key", root / "keys" / "server.key")
    result = scan(str(root), Policy())
    warnings = find_secrets(str(root), result.entries)
    assert [(w.path, w.kind) for w in warnings] == [(b"/real.key", "private_key")]


def test_only_the_head_of_a_candidate_is_read(tmp_path: Path) -> None:
    late = "x" * PEEK_BYTES + PEM_KEY
    assert _warnings(tmp_path, {"/a/late.pem": late}) == {}


def test_warning_names_path_and_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "ssh_host_rsa_key").write_text(RSA_KEY)
    (root / os.fsdecode(b"k\xff.key")).write_text(PEM_KEY)
    warnings = find_secrets(str(root), scan(str(root), Policy()).entries)
    texts = sorted(str(w) for w in warnings)
    assert texts[0].startswith("/etc/ssh/ssh_host_rsa_key: ")
    assert "every instance" in texts[0]
    assert texts[1] == "/k%FF.key: contains a private key"
    assert warnings[0].to_json()["path"] in {"/etc/ssh/ssh_host_rsa_key", "/k%FF.key"}


def test_strict_bake_fails_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "server.key").write_text(PEM_KEY)
    out = tmp_path / "out"
    with pytest.raises(SecretsFoundError) as caught:
        bake(str(root), str(out), policy=Policy(), strict=True)
    assert [w.kind for w in caught.value.warnings] == ["private_key"]
    assert not out.exists()
    result = bake(str(root), str(out), policy=Policy())
    assert [w.kind for w in result.warnings] == ["private_key"]
    assert result.image["secrets_warnings"] == 1
