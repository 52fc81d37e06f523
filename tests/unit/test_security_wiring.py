"""How the controller, the CLI and the agent take up security settings, without a network.

Settings (TOML/env/flags) become a ServerSecurity; ``corral-controller serve``
refuses plaintext off loopback before starting and allows it with
``--insecure`` (the server then logs the warning when it binds); the operator
CLI exits 2 on half-given TLS files; the fleet API names an unauthenticated
caller as a claim only; the agent waits as long as a ``retry-after-ms`` says.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.daemon.transport import GrpcTransport, retry_after
from agent.errors import RetryableError
from controller.api.fleet_service import actor_of
from controller.cli import client, serve
from controller.config import ControllerConfig, load_config
from controller.errors import ConfigError
from controller.security.caller import caller
from controller.security.errors import CertificateError
from controller.security.identity import Identity, Role
from controller.security.listen import INSECURE_WARNING
from controller.security.serving import bind, security_from_config


@pytest.fixture(autouse=True)
def _no_corral_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("CORRAL_")]:
        monkeypatch.delenv(key)


def test_tls_settings_come_from_the_environment_and_the_key_path_is_not_shown() -> None:
    config = load_config(
        env={
            "CORRAL_TLS_CA_FILE": "/etc/corral/ca.pem",
            "CORRAL_TLS_CERT_FILE": "/etc/corral/c.crt",
            "CORRAL_TLS_KEY_FILE": "/etc/corral/c.key",
            "CORRAL_INSECURE": "yes",
            "CORRAL_AGENT_RATE": "5",
        }
    )
    assert (config.tls_ca_file, config.tls_cert_file, config.tls_key_file) == (
        "/etc/corral/ca.pem",
        "/etc/corral/c.crt",
        "/etc/corral/c.key",
    )
    assert config.insecure is True
    assert "c.key" not in repr(config)
    security = security_from_config(config)
    assert security.tls is not None and security.tls.key_file == "/etc/corral/c.key"
    assert security.rates[Role.AGENT].per_second == 5.0


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("0", False), ("off", False), (True, True)]
)
def test_insecure_is_a_boolean(value: Any, expected: bool) -> None:
    assert load_config(env={}, overrides={"insecure": value}).insecure is expected


def test_a_non_boolean_insecure_is_refused() -> None:
    with pytest.raises(ConfigError, match="insecure"):
        load_config(env={"CORRAL_INSECURE": "maybe"})


def test_half_the_tls_files_is_refused() -> None:
    with pytest.raises(CertificateError, match="all of the CA, certificate and key"):
        security_from_config(ControllerConfig(tls_ca_file="/ca.pem"))


@pytest.mark.parametrize(
    "changes", [{"trust_domain": "Not A Domain"}, {"agent_rate": 0.0}, {"agent_burst": 0}]
)
def test_unusable_security_settings_are_config_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="security settings"):
        security_from_config(ControllerConfig(**changes))


def test_no_tls_means_no_security_interceptor_and_plaintext() -> None:
    security = security_from_config(ControllerConfig())
    assert security.tls is None and not security.insecure


def _serve(monkeypatch: pytest.MonkeyPatch) -> list[ControllerConfig]:
    started: list[ControllerConfig] = []

    async def fake_serve(config: ControllerConfig, **_: Any) -> None:
        started.append(config)

    monkeypatch.setattr(serve, "serve", fake_serve)
    monkeypatch.setattr(serve, "configure_logging", lambda **_: None)
    return started


def test_serve_refuses_a_non_loopback_address_without_tls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    started = _serve(monkeypatch)
    code = serve.main(["serve", "--listen", "0.0.0.0:7070", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "refusing to serve 0.0.0.0:7070 without TLS" in capsys.readouterr().err
    assert started == []


def test_serve_allows_loopback_without_tls_and_off_loopback_with_insecure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = _serve(monkeypatch)
    assert serve.main(["serve", "--listen", "127.0.0.1:7070", "--data-dir", str(tmp_path)]) == 0
    argv = ["serve", "--listen", "0.0.0.0:7070", "--insecure", "--data-dir", str(tmp_path)]
    assert serve.main(argv) == 0
    assert [config.insecure for config in started] == [False, True]


def test_serve_takes_tls_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started = _serve(monkeypatch)
    argv = ["serve", "--listen", "10.0.0.5:7070", "--data-dir", str(tmp_path)]
    argv += ["--tls-ca", "/ca.pem", "--tls-cert", "/c.crt", "--tls-key", "/c.key"]
    assert serve.main(argv) == 0
    assert started[0].tls_cert_file == "/c.crt" and not started[0].insecure


class _FakeServer:
    def __init__(self) -> None:
        self.bound: list[str] = []

    def add_insecure_port(self, address: str) -> int:
        self.bound.append(address)
        return 7070


def test_an_insecure_bind_logs_the_warning(caplog: pytest.LogCaptureFixture) -> None:
    server = _FakeServer()
    security = security_from_config(ControllerConfig(insecure=True))
    with caplog.at_level(logging.WARNING, logger="corral.security"):
        assert bind(server, "0.0.0.0:7070", security) == 7070  # type: ignore[arg-type]
    assert server.bound == ["0.0.0.0:7070"]
    assert INSECURE_WARNING.format(address="0.0.0.0:7070") in caplog.text


def test_a_loopback_bind_is_quiet_and_a_remote_one_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    security = security_from_config(ControllerConfig())
    with caplog.at_level(logging.WARNING, logger="corral.security"):
        bind(_FakeServer(), "127.0.0.1:0", security)  # type: ignore[arg-type]
    assert caplog.text == ""
    with pytest.raises(ConfigError):
        bind(_FakeServer(), "[::]:7070", security)  # type: ignore[arg-type]


def test_the_cli_exits_2_on_half_given_tls_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = argparse.Namespace(
        command="fleet",
        controller="127.0.0.1:1",
        timeout=1.0,
        tls_ca=str(tmp_path / "ca.pem"),
        tls_cert=None,
        tls_key=None,
    )
    assert client.run_with_client(args, lambda c, a: 0) == 2
    assert "TLS:" in capsys.readouterr().err


def test_the_cli_exits_2_on_unreadable_tls_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("CA", "CERT", "KEY"):
        monkeypatch.setenv(f"CORRAL_CLIENT_TLS_{name}_FILE", str(tmp_path / name))
    args = argparse.Namespace(command="fleet", controller=None, timeout=1.0)
    assert client.run_with_client(args, lambda c, a: 0) == 2
    assert "cannot read TLS file" in capsys.readouterr().err


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


def test_the_certificate_names_the_actor_and_metadata_is_only_a_claim() -> None:
    claimed = _Context((("corral-actor", "alice@laptop"),))
    assert actor_of(claimed) == "unverified:alice@laptop"  # type: ignore[arg-type]
    assert actor_of(_Context(())) == "unverified:ipv4:127.0.0.1:5555"  # type: ignore[arg-type]
    token = caller.set(Identity(Role.OPERATOR, "bob"))
    try:
        assert actor_of(claimed) == "operator:bob"  # type: ignore[arg-type]
    finally:
        caller.reset(token)


class _Refused(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...]) -> None:
        self._code = code
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "over its rate limit"

    # grpc's stubs disagree on this one (RpcError: objects with .key and .value; Call: the
    # (key, value) pairs grpc returns at run time): the pairs, as the agent reads them.
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return self._trailers

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


@pytest.mark.parametrize(
    ("trailer", "seconds"),
    [("2500", 2.5), ("0", 0.0), ("-3", 0.0), ("soon", 0.0), ("inf", 0.0), ("1e12", 3600.0)],
)
def test_the_agent_reads_the_retry_hint(trailer: str, seconds: float) -> None:
    error = _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", trailer),))
    assert retry_after(error) == seconds


def test_a_rate_limited_report_is_retried_no_sooner_than_asked() -> None:
    transport = GrpcTransport("127.0.0.1:1", deadline=1.0, agent_version="test")
    try:
        error = _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", "1500"),))
        with pytest.raises(RetryableError) as raised:
            transport._failed(error)
        assert raised.value.delay == 1.5
        with pytest.raises(RetryableError) as unavailable:
            transport._failed(_Refused(grpc.StatusCode.UNAVAILABLE, ()))
        assert unavailable.value.delay == 0.0
    finally:
        transport.close()
