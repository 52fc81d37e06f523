"""Both settings loaders, fed arbitrary TOML values, environment strings and flags.

Whatever comes in, the outcome is a valid config or a ConfigError that names a
setting and where it came from (the file, ``environment (VARIABLE)`` or the
command line); never another exception.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.daemon import config as agent_config
from controller import config as controller_config
from controller.errors import ConfigError as ControllerConfigError

AGENT_KEYS = [f.name for f in fields(agent_config.AgentConfig)]
CONTROLLER_KEYS = [f.name for f in fields(controller_config.ControllerConfig)]
GROUP_KEYS = [f.name for f in fields(controller_config.GroupConfig)]
EXTRA_KEYS = ["colour", "interval_s"]

text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
plausible = st.sampled_from(
    ["", "0", "1", "-1", "5", "2.5", "yes", "off", "nan", "inf", "1e999", "9" * 40, "a:1"]
)
plausible_text = st.sampled_from(
    ["[::1]:7070", "host:99999", "info", "DEBUG", "postgres", "unix:///s", "web", "c:1"]
)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    plausible,
    plausible_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from([*GROUP_KEYS, "mode", "x"]), inner, max_size=4),
    ),
    max_leaves=8,
)


def to_toml(value: Any) -> str:
    """A TOML literal for ``value`` (inline tables and arrays nest)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's, once DEL (raw in JSON, not in TOML) is escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(item) for item in value) + "]"
    return "{" + ", ".join(f"{key} = {to_toml(item)}" for key, item in value.items()) + "}"


def assert_refusal_is_explained(
    error: Exception, path: str, keys: list[str], env_prefix: str
) -> None:
    message = str(error)
    assert any(key in message.replace(path, "") for key in keys), message
    sources = (f"config file {path}", f"environment ({env_prefix}", "command line")
    # A required setting nobody gave has no source: its message names the variable instead.
    missing = [f"set {env_prefix}{key.upper()}" for key in keys]
    assert any(source in message for source in (*sources, *missing)), message


def run(
    load: Callable[[str, dict[str, str], dict[str, Any]], Any],
    error: type[Exception],
    env_prefix: str,
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    flags: Mapping[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "settings.toml"
        path.write_text("".join(f"{key} = {to_toml(v)}\n" for key, v in file_values.items()))
        environment = {env_prefix + key.upper(): value for key, value in env.items()}
        keys = [*file_values, *env, *flags]
        try:
            load(str(path), environment, dict(flags))
        except error as exc:
            assert_refusal_is_explained(exc, str(path), keys, env_prefix)


def sources(keys: list[str]) -> st.SearchStrategy[tuple[Any, Any, Any]]:
    names = st.sampled_from(keys + EXTRA_KEYS)
    return st.tuples(
        st.dictionaries(names, values, max_size=4),
        st.dictionaries(names, st.one_of(text, plausible, plausible_text), max_size=3),
        st.dictionaries(names, st.one_of(values, st.none()), max_size=2),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources(AGENT_KEYS))
def test_the_agent_loader_explains_every_refusal(layers: tuple[Any, Any, Any]) -> None:
    file_values, env, flags = layers

    def load(path: str, environment: dict[str, str], given: dict[str, Any]) -> Any:
        return agent_config.load_config(
            flags={"controller": "ctl:7070", **given}, env=environment, config_file=path
        )

    run(load, agent_config.ConfigError, "CORRAL_AGENT_", file_values, env, flags)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources(CONTROLLER_KEYS))
def test_the_controller_loader_explains_every_refusal(layers: tuple[Any, Any, Any]) -> None:
    file_values, env, flags = layers

    def load(path: str, environment: dict[str, str], given: dict[str, Any]) -> Any:
        return controller_config.load_config(Path(path), env=environment, overrides=given)

    run(load, ControllerConfigError, "CORRAL_", file_values, env, flags)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from([*GROUP_KEYS, "mode"]), values), max_size=3))
def test_declared_groups_are_read_or_refused_by_name(groups: list[dict[str, Any]]) -> None:
    run(
        lambda path, env, flags: controller_config.load_config(Path(path), env=env),
        ControllerConfigError,
        "CORRAL_",
        {"groups": groups},
        {},
        {},
    )
