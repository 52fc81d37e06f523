"""Container mode settings: ``--container``, ``--engine``, ``--container-full-scan-interval``."""

from __future__ import annotations

import pytest

from agent.daemon.cli import _flags, build_parser
from agent.daemon.config import ConfigError, load_config


def test_flags_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["run", "--controller", "127.0.0.1:1", "--container", "web-1",
         "--engine", "unix:///run/docker.sock", "--container-full-scan-interval", "600"]
    )  # fmt: skip
    config = load_config(flags=_flags(args), env={})
    assert (config.container, config.engine) == ("web-1", "unix:///run/docker.sock")
    assert config.container_full_scan_interval == 600.0


def test_environment_and_defaults() -> None:
    env = {"CORRAL_AGENT_CONTAINER": "abc"}
    config = load_config(flags={"controller": "127.0.0.1:1"}, env=env)
    assert config.container == "abc"
    assert config.engine == "unix:///run/podman/podman.sock"
    assert config.container_full_scan_interval == 3600.0
    assert load_config(flags={"controller": "127.0.0.1:1"}, env={}).container is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"container": "x", "engine": "tcp://127.0.0.1:2375"}, "unix:///PATH"),
        ({"container_full_scan_interval": 0}, "container_full_scan_interval must be positive"),
    ],
)
def test_bad_settings_are_refused(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(flags={"controller": "127.0.0.1:1", **flags}, env={})
