"""Settings from defaults, a TOML file, the environment and flags, read one way.

Both programs (``corral-agent run`` and ``corral-controller serve``) describe their
settings as a frozen dataclass and hand it to a :class:`Loader`. The loader merges
defaults < TOML file < environment < flags, converts each value to the type the
dataclass annotates (resolved with :func:`typing.get_type_hints`), runs the
program's own per-setting checks, and turns every bad value into the program's
``ConfigError`` naming the setting and where it came from: the file's path,
``environment (VARIABLE)`` or ``command line``. Nothing else escapes: a table
where a number belongs, a list, a 400-digit integer, NaN or a misspelt boolean
are all refused in the same words.

Supported annotations: ``str``, ``int``, ``float``, ``bool`` and ``X | None`` of
those (where an empty string means None). Anything else needs a ``tables``
reader supplied by the program (the controller's ``groups`` and ``providers``).
Fields declared with ``repr=False`` are secrets: their values are never shown.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Check = Callable[[Any], None]
"""A per-setting rule: raises ValueError saying what is wrong (``must be positive``)."""

INT_LIMIT = 2**63 - 1
"""Integers are 64-bit signed, as everything downstream (gRPC, SQL) expects."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_SCALARS: tuple[type, ...] = (str, int, float, bool)


# --- conversion ---------------------------------------------------------------------


def to_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {_kind(value)}")
    return value


def to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("is too large") from None
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a whole number, not {_kind(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        value = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 32:  # int() on huge digit strings is slow, then refused anyway
            raise ValueError("is too large")
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if not -INT_LIMIT - 1 <= value <= INT_LIMIT:
        raise ValueError("does not fit in 64 bits")
    return int(value)


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    str: to_text,
    int: to_int,
    float: to_float,
    bool: to_bool,
}


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return f"a {type(value).__name__}"


def converter(annotation: Any) -> Callable[[Any], Any]:
    """The conversion for a resolved annotation (``float``, ``str | None`` …)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            inner = converter(members[0])
            return lambda value: None if value is None or value == "" else inner(value)
    if annotation in _CONVERTERS:
        return _CONVERTERS[annotation]
    raise TypeError(f"no conversion for settings of type {annotation!r}")


# --- per-setting rules ----------------------------------------------------------------


def positive(value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError("must be positive")


def not_negative(value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError("must not be negative")


def between(low: int, high: int) -> Check:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")

    return check


def one_of(*choices: str, ignore_case: bool = False) -> Check:
    def check(value: Any) -> None:
        text = value.lower() if ignore_case else value
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices[:-1])} or {choices[-1]}")

    return check


def host_port(*, host_required: bool, empty_ok: bool) -> Check:
    """HOST:PORT with a port 0-65535 (an IPv6 host in brackets); None always passes."""

    def check(value: Any) -> None:
        if value is None or (value == "" and empty_ok):
            return
        host, colon, port = value.rpartition(":")
        if not colon or not port.isdigit() or int(port) > 65535 or (host_required and not host):
            raise ValueError("must be HOST:PORT with a port from 0 to 65535")
        if host.startswith("[") != host.endswith("]"):
            raise ValueError("must put an IPv6 host in brackets: [::1]:7070")

    return check


def matches(pattern: str, description: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: Any) -> None:
        if value is not None and not compiled.fullmatch(value):
            raise ValueError(f"is not {description}")

    return check


def show(cls: type, key: str, value: Any) -> str:
    """``repr`` of a value (cut at 80 characters), or ``<secret>`` for a ``repr=False`` field."""
    declared = cls.__dataclass_fields__.get(key)  # type: ignore[attr-defined]
    if declared is not None and not declared.repr:
        return "<secret>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fields(obj: Any, checks: Mapping[str, Check], error: Callable[[str], Exception]) -> None:
    """Run ``checks`` on a constructed dataclass (for ``__post_init__``)."""
    for key, check in checks.items():
        value = getattr(obj, key)
        try:
            check(value)
        except ValueError as exc:
            raise error(f"{key} {exc} (got {show(type(obj), key, value)})") from None


# --- the loader -----------------------------------------------------------------------


TableReader = Callable[[Any], Any]
"""Reads a setting the scalar types cannot express; raises ValueError when it is wrong."""


@dataclass(frozen=True)
class Loader(Generic[T]):
    """How one program's settings are read; :meth:`load` does the reading."""

    cls: type[T]
    #: The program's ConfigError; every refusal is one of these.
    error: type[Exception]
    env_prefix: str
    #: Variables with the prefix that are not settings (the config file's own name).
    env_skip: frozenset[str] = frozenset()
    #: Refuse unknown ``PREFIX_*`` variables (the agent owns its prefix; the controller
    #: shares ``CORRAL_`` with the client and ignores the ones it does not know).
    env_strict: bool = True
    #: Read the file's settings from this table when it is present (``[agent]``).
    file_table: str | None = None
    checks: Mapping[str, Check] = field(default_factory=dict)
    tables: Mapping[str, TableReader] = field(default_factory=dict)
    #: Pairs where setting one in a later source clears the other from earlier ones.
    exclusive: Mapping[str, str] = field(default_factory=dict)
    #: The message for a required setting nobody gave.
    missing: Mapping[str, str] = field(default_factory=dict)

    #: Each scalar setting's conversion, from the class's resolved annotations.
    converters: Mapping[str, Callable[[Any], Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(self.cls)
        converters = {
            f.name: converter(hints[f.name])
            for f in dataclasses.fields(self.cls)  # type: ignore[arg-type]
            if f.name not in self.tables
        }
        object.__setattr__(self, "converters", converters)

    def env_name(self, key: str) -> str:
        return self.env_prefix + key.upper()

    def load(self, *, path: str | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> T:
        """Merge defaults < ``path`` (TOML) < ``env`` < ``flags`` (None = not given)."""
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        file_values = self.read_file(path) if path else {}
        env_values = self._from_env(env)
        given = {key: value for key, value in flags.items() if value is not None}
        # Each source's values, with where each came from as the messages name it.
        layers = [
            (file_values, {key: f"config file {path}" for key in file_values}),
            (env_values, {key: f"environment ({self.env_name(key)})" for key in env_values}),
            (given, dict.fromkeys(given, "command line")),
        ]
        for values, where in layers:
            parsed = {key: self.parse(key, raw, where[key]) for key, raw in values.items()}
            for key in parsed:
                other = self.exclusive.get(key)
                if other is not None and other not in parsed:
                    merged[other] = None
                    origin[other] = where[key]
            merged.update(parsed)
            origin.update(where)
        for key, message in self.missing.items():
            if key not in merged:
                raise self.error(message)
        try:
            return self.cls(**merged)
        except self.error as exc:  # a rule across settings, from the class itself
            named = [key for key in origin if re.search(rf"\b{key}\b", str(exc))]
            whence = "; ".join(f"{key} from {origin[key]}" for key in named)
            raise self.error(f"{exc} ({whence})" if whence else str(exc)) from None

    def parse(self, key: str, raw: Any, source: str) -> Any:
        """One value from ``source``, converted and checked."""
        table = self.tables.get(key)
        if table is not None:
            try:
                return table(raw)
            except ValueError as exc:  # raw tables can be long: say what is wrong, not all of it
                raise self.error(f"{source}: {key}: {exc}") from None
        convert = self.converters.get(key)
        if convert is None:
            raise self.error(f"{source}: unknown setting {key!r}")
        try:
            value = convert(raw)
            check = self.checks.get(key)
            if check is not None:
                check(value)
        except ValueError as exc:
            raise self.error(f"{source}: {key} {exc} (got {show(self.cls, key, raw)})") from None
        return value

    def read_file(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise self.error(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise self.error(f"config file {path} is not valid TOML: {exc}") from None
        if self.file_table is None or self.file_table not in data:
            return data
        table = data[self.file_table]
        if not isinstance(table, dict):
            raise self.error(f"config file {path}: [{self.file_table}] must be a table")
        return table

    def _from_env(self, env: Mapping[str, str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, value in env.items():
            if not name.startswith(self.env_prefix) or name in self.env_skip:
                continue
            key = name.removeprefix(self.env_prefix).lower()
            if self.env_strict or key in self.converters:
                found[key] = value
        return found
