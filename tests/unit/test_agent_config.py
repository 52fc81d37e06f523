"""Agent settings: defaults < TOML < environment < flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent.daemon.config as config_module
from agent.daemon.config import AgentConfig, ConfigError, env_name, load_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_defaults_need_only_a_controller() -> None:
    config = load_config(flags={"controller": "ctl:7443"}, env={})
    assert config == AgentConfig(controller="ctl:7443")
    assert config.root == "/" and config.interval == 30.0 and config.scan_jitter == 3.0
    assert config.full_rehash_interval == 86400.0 and config.full_rehash_every is None
    assert config.manifest_path == "/etc/corral/manifest.pb"


def test_toml_then_env_then_flags_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'controller = "file:1"\ninterval = 10\ngroup = "from-file"\nroot = "/srv"\n',
    )
    env = {"CORRAL_AGENT_INTERVAL": "20", "CORRAL_AGENT_GROUP": "from-env"}
    config = load_config(flags={"interval": 40.0, "group": None}, env=env, config_file=path)
    assert config.controller == "file:1"  # only the file sets it
    assert config.root == "/srv"
    assert config.group == "from-env"  # env beats the file; the unset flag does not count
    assert config.interval == 40.0  # the flag beats both


def test_the_file_may_use_an_agent_table_and_be_named_by_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ncontroller = "ctl:1"\nonce = true\nnice = 5\n')
    config = load_config(flags={}, env={"CORRAL_AGENT_CONFIG": path})
    assert config.once and config.nice == 5


def test_a_later_source_choosing_the_other_rehash_mode_replaces_the_earlier(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 'controller = "c:1"\nfull_rehash_every = 5\n')
    from_file = load_config(flags={}, env={}, config_file=path)
    assert from_file.full_rehash_every == 5 and from_file.full_rehash_interval is None
    from_env = load_config(
        flags={}, env={"CORRAL_AGENT_FULL_REHASH_INTERVAL": "600"}, config_file=path
    )
    assert from_env.full_rehash_interval == 600 and from_env.full_rehash_every is None
    with pytest.raises(ConfigError, match="only one"):
        write(tmp_path, 'controller = "c:1"\nfull_rehash_every = 5\nfull_rehash_interval = 9\n')
        load_config(flags={}, env={}, config_file=str(tmp_path / "agent.toml"))


def test_env_values_are_parsed_by_type() -> None:
    env = {
        "CORRAL_AGENT_CONTROLLER": "10.0.0.1:7443",
        "CORRAL_AGENT_READ_BUDGET": "1048576",
        "CORRAL_AGENT_ONCE": "yes",
        "CORRAL_AGENT_METRICS_LISTEN": "",
        "CORRAL_AGENT_JITTER": "0",
    }
    config = load_config(flags={}, env=env)
    assert config.read_budget == 1 << 20 and config.once
    assert config.metrics_listen is None and config.scan_jitter == 0.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CORRAL_AGENT_INTERVAL": "soon"},
            r"environment \(CORRAL_AGENT_INTERVAL\): interval must be a number \(got 'soon'\)",
        ),
        ({"CORRAL_AGENT_INTERVAL": "0"}, "interval must be positive"),
        ({"CORRAL_AGENT_COLOUR": "blue"}, "unknown setting 'colour'"),
        ({"CORRAL_AGENT_CONTROLLER": "no-port"}, "controller must be HOST:PORT"),
        ({"CORRAL_AGENT_NICE": "40"}, "nice must be between"),
        ({"CORRAL_AGENT_ONCE": "maybe"}, "must be true or false"),
        ({"CORRAL_AGENT_TLS_CERT_FILE": "/c.pem"}, "go together"),
        ({"CORRAL_AGENT_GROUP": "web tier"}, "not a group name"),
    ],
)
def test_bad_settings_say_which_and_where(env: dict[str, str], message: str) -> None:
    env = {"CORRAL_AGENT_CONTROLLER": "c:1", **env}
    with pytest.raises(ConfigError, match=message):
        load_config(flags={}, env=env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interval = {every = 5}", "interval must be a number, not a table"),
        ("interval = [5, 6]", "interval must be a number, not a list"),
        ("interval = nan", "interval must be a finite number"),
        ("deadline = -inf", "deadline must be a finite number"),
        ("outbox_capacity = 123456789012345678901234", "outbox_capacity does not fit in 64 bits"),
        ("workers = -2", "workers must not be negative"),
        ('once = "maybe"', "once must be true or false"),
        ("once = 1", "once must be true or false"),
        ("root = 5", "root must be text, not an integer"),
        ("nice = 2.5", "nice must be a whole number"),
    ],
)
def test_bad_toml_values_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, f'controller = "c:1"\n{text}\n')
    with pytest.raises(ConfigError) as raised:
        load_config(flags={}, env={}, config_file=path)
    assert str(raised.value).startswith(f"config file {path}: ")
    assert message in str(raised.value)


def test_a_long_bad_value_is_shown_cut_short() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(flags={"controller": "c:1"}, env={"CORRAL_AGENT_GROUP": "g" * 500})
    assert "group is not a group name" in str(raised.value)
    assert "g" * 70 + "..." in str(raised.value) and "g" * 100 not in str(raised.value)


def test_a_rule_across_settings_says_where_each_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, 'controller = "c:1"\ntls_ca_file = "/ca.pem"\n')
    env = {"CORRAL_AGENT_TLS_CERT_FILE": "/agent.pem"}
    with pytest.raises(ConfigError) as raised:
        load_config(flags={}, env=env, config_file=path)
    assert "tls_cert_file and tls_key_file go together" in str(raised.value)
    assert "tls_cert_file from environment (CORRAL_AGENT_TLS_CERT_FILE)" in str(raised.value)


def test_a_missing_controller_says_how_to_set_it() -> None:
    with pytest.raises(ConfigError, match="--controller HOST:PORT or set CORRAL_AGENT_CONTROLLER"):
        load_config(flags={}, env={})


def test_unknown_toml_keys_and_bad_toml_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'intervall'"):
        load_config(flags={}, env={}, config_file=write(tmp_path, "intervall = 3\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(flags={}, env={}, config_file=write(tmp_path, "interval = = 3\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(flags={}, env={}, config_file=str(tmp_path / "absent.toml"))


def test_the_tls_key_path_is_kept_out_of_repr() -> None:
    config = load_config(
        flags={"controller": "c:1"},
        env={
            "CORRAL_AGENT_TLS_CA_FILE": "/etc/corral/ca.pem",
            "CORRAL_AGENT_TLS_CERT_FILE": "/etc/corral/agent.pem",
            "CORRAL_AGENT_TLS_KEY_FILE": "/etc/corral/secret-agent.key",
        },
    )
    assert config.tls_key_file == "/etc/corral/secret-agent.key"
    assert "secret-agent" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        load_config(flags={"controller": "c:1"}, env={"CORRAL_AGENT_TLS_KEY_FILE": 3})  # type: ignore[dict-item]
    assert "<secret>" in str(caught.value)


def test_every_setting_has_a_documented_variable() -> None:
    doc = config_module.__doc__ or ""
    for name in AgentConfig.__dataclass_fields__:
        assert env_name(name) in doc, name
