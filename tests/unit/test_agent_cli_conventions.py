"""corral-agent follows the conventions of corral and corral-controller."""

from __future__ import annotations

import pytest

from agent.daemon.cli import _flags, build_parser
from agent.daemon.config import AgentConfig, ConfigError


def test_tls_flags_set_the_tls_settings() -> None:
    args = build_parser().parse_args(
        ["run", "--tls-ca", "ca.pem", "--tls-cert", "a.crt", "--tls-key", "a.key"]
    )
    flags = _flags(args)
    assert (flags["tls_ca_file"], flags["tls_cert_file"], flags["tls_key_file"]) == (
        "ca.pem",
        "a.crt",
        "a.key",
    )


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("corral-agent ")


@pytest.mark.parametrize("level", ["debug", "info", "WARNING", "Error"])
def test_log_levels_in_any_case(level: str) -> None:
    AgentConfig(controller="127.0.0.1:7070", log_level=level)


def test_an_unknown_log_level_is_refused() -> None:
    with pytest.raises(ConfigError, match="debug, info, warning or error"):
        AgentConfig(controller="127.0.0.1:7070", log_level="verbose")
