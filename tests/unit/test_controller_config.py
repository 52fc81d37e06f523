"""Controller settings: defaults < TOML file < CORRAL_* environment < flags; bad values say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.cli import serve
from controller.config import ControllerConfig, load_config
from controller.domain.model import GroupMode
from controller.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "controller.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(env={})
    assert config == ControllerConfig()
    assert config.listen == "127.0.0.1:7070"
    assert config.metrics_listen == "127.0.0.1:9470"
    assert config.effective_stale_after == 3 * config.report_interval
    assert config.groups == ()


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'listen = "0.0.0.0:7000"\nmetrics_listen = "0.0.0.0:9000"\n'
        'data_dir = "/from/file"\nreport_interval = 20\nstale_after = 100\n',
    )
    env = {
        "CORRAL_METRICS_LISTEN": "0.0.0.0:9001",
        "CORRAL_DATA_DIR": "/from/env",
        "CORRAL_REPORT_INTERVAL": "15",
    }
    flags = {"data_dir": "/from/flag", "listen": None, "log_level": None}
    config = load_config(path, env=env, overrides=flags)
    assert config.listen == "0.0.0.0:7000"  # file (the flag was not given)
    assert config.metrics_listen == "0.0.0.0:9001"  # env beats file
    assert config.data_dir == "/from/flag"  # flag beats env
    assert config.report_interval == 15.0  # env, coerced to a number
    assert config.effective_stale_after == 100.0  # file
    assert config.log_level == "info"  # default


def test_unrelated_environment_is_ignored() -> None:
    env = {"CORRAL_CONTROLLER": "elsewhere:1", "HOME": "/root", "CORRAL_LISTEN": "[::1]:7070"}
    assert load_config(env=env).listen == "[::1]:7070"


def test_metrics_can_be_turned_off() -> None:
    assert load_config(env={"CORRAL_METRICS_LISTEN": ""}).metrics_listen == ""


def test_groups_from_the_file(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        '[[groups]]\nname = "web"\nimage = "web@sha256:aa"\nmode = "enforce"\nsize = 3\n'
        '[[groups]]\nname = "db"\nimage = "db@sha256:bb"\n',
    )
    groups = load_config(path, env={}).groups
    assert [(g.name, g.image, g.mode, g.size) for g in groups] == [
        ("web", "web@sha256:aa", GroupMode.ENFORCE, 3),
        ("db", "db@sha256:bb", GroupMode.OBSERVE, 0),
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("report_interval = -1", "report_interval"),
        ('report_interval = "soon"', "report_interval"),
        ("max_attempts = 0", "must be positive"),
        ("max_attempts = 1.5", "whole number"),
        ("max_attempts = true", "true/false"),
        ('listen = "7070"', "HOST:PORT"),
        ('listen = "host:99999"', "HOST:PORT"),
        ('log_level = "loud"', "log_level"),
        ("listne = 1", "unknown setting 'listne'"),
        ("sweep_interval = {seconds = 5}", "sweep_interval must be a number, not a table"),
        ("sweep_interval = [5]", "sweep_interval must be a number, not a list"),
        ("sweep_interval = nan", "sweep_interval must be a finite number"),
        ("sweep_interval = inf", "sweep_interval must be a finite number"),
        ("max_attempts = 99999999999999999999", "max_attempts does not fit in 64 bits"),
        ("max_attempts = -3", "max_attempts must be positive"),
        ('insecure = "sure"', "insecure must be true or false"),
        ("data_dir = 5", "data_dir must be text, not an integer"),
        ('store = "mysql"', "store must be one of sqlite or postgres"),
        ("groups = 5", "groups must be a list"),
        ('[[groups]]\nname = "web"\nimage = "x"\nsize = "big"\n', "size must be a whole number"),
        ('[[groups]]\nname = "web"\nimage = "x"\nmode = ["enforce"]\n', "observe"),
        ("listen = ", "not valid TOML"),
        ('[[groups]]\nname = "web"\n', "needs a name and an image"),
        ('[[groups]]\nname = "web"\nimage = "x"\nmode = "fix"\n', "observe"),
        ('[[groups]]\nname = "web"\nimage = "x"\ncolour = 1\n', "unknown keys"),
    ],
)
def test_bad_file_values_name_the_key_and_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    assert words in str(raised.value)
    assert str(path) in str(raised.value)


def test_bad_environment_value_names_the_environment() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env={"CORRAL_SWEEP_INTERVAL": "often"})
    assert "environment (CORRAL_SWEEP_INTERVAL)" in str(raised.value)
    assert "sweep_interval" in str(raised.value)


def test_a_secret_is_not_shown_in_a_refusal() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env={}, overrides={"postgres_dsn": 5})
    assert "postgres_dsn" in str(raised.value) and "<secret>" in str(raised.value)


def test_bad_flag_names_the_command_line() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env={}, overrides={"listen": "nowhere"})
    assert "command line" in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "absent.toml", env={})
    assert "cannot read config file" in str(raised.value)


def test_serve_exits_2_on_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("CORRAL_")]:
        monkeypatch.delenv(key)
    path = toml(tmp_path, "stale_after = -5")
    assert serve.main(["serve", "--config", str(path)]) == 2
    assert "stale_after" in capsys.readouterr().err
