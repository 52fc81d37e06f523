"""Watch mode's settings: on by default, off with --no-watch / watch = false / env."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon.cli import _flags, build_parser
from agent.daemon.config import AgentConfig, ConfigError, load_config


def _config(
    argv: list[str], env: dict[str, str] | None = None, file: str | None = None
) -> AgentConfig:
    args = build_parser().parse_args(["run", "--controller", "c:1", *argv])
    return load_config(flags=_flags(args), env=env or {}, config_file=file)


def test_watch_mode_is_on_by_default_with_an_hourly_safety_net_scan() -> None:
    config = _config([])
    assert config.watch is True and config.watch_scan_interval == 3600.0


def test_no_watch_turns_it_off_and_beats_the_file_and_the_environment(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text("watch = true\nwatch_scan_interval = 600\n")
    config = _config(["--no-watch"], {"CORRAL_AGENT_WATCH": "true"}, str(toml))
    assert config.watch is False and config.watch_scan_interval == 600.0


def test_the_file_and_the_environment_can_turn_it_off(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text("[agent]\nwatch = false\n")
    assert _config([], file=str(toml)).watch is False
    assert _config([], {"CORRAL_AGENT_WATCH": "off"}).watch is False
    assert _config(["--watch-scan-interval", "120"]).watch_scan_interval == 120.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CORRAL_AGENT_WATCH": "maybe"}, "watch must be true or false"),
        ({"CORRAL_AGENT_WATCH_SCAN_INTERVAL": "0"}, "watch_scan_interval must be positive"),
    ],
)
def test_bad_watch_settings_say_which(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config([], env)
