"""The policy: which paths an image's manifest checks and which attributes count.

A policy is baked with the manifest, so it is part of the image's identity.

Rules (documented for operators in docs/policy.md):

- ``include``: absolute directory paths whose subtrees are checked (default ``/``).
- ``exclude``: glob patterns of mutable paths, which are never scanned and never
  drift. ``*`` matches within one path component, ``**`` matches across
  components, ``?`` matches one character and ``[...]`` a character class.
  A pattern that matches a directory excludes everything below it, so ``/var/log``
  excludes the whole log tree, while ``/tmp/*`` keeps ``/tmp`` itself checked.
- ``ignore_attributes``: attributes that never count as drift (``mode``, ``uid``,
  ``gid``, ``content``, ``size``, ``target``, ``device``); ignored attributes
  are recorded as zero. A change of type always counts.
- ``one_filesystem``: do not descend into other filesystems (mount points).

The default excludes the kernel's virtual filesystems, runtime state, temporary
directories, logs, caches and the agent's own data directory.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from agent.errors import PolicyError
from protos.corral.v1 import manifest_pb2

DEFAULT_EXCLUDE: tuple[str, ...] = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
    "/var/log",
    "/var/cache",
    "/var/lib/corral-agent",
)
# Attributes a policy may ignore. A change of type (a file replaced by a symlink)
# always counts, so "type" is not among them.
ATTRIBUTES: tuple[str, ...] = ("mode", "uid", "gid", "size", "content", "target", "device")


def _class(pattern: str, start: int) -> tuple[str, int]:
    """The regular expression for the ``[...]`` class opening at ``start``, and its end."""
    body_start = start + 1
    if pattern.startswith("!", body_start):
        body_start += 1
    search_from = body_start + 1 if pattern.startswith("]", body_start) else body_start
    end = pattern.find("]", search_from)
    if end < 0:
        raise PolicyError(f"unclosed '[' in pattern {pattern!r}")
    body = "".join("-" if char == "-" else re.escape(char) for char in pattern[body_start:end])
    if body_start > start + 1:
        return f"[^/{body}]", end + 1
    return f"[{body}]", end + 1


def _translate(pattern: str) -> str:
    """A glob pattern as a regular expression over decoded paths (subtree semantics).

    Paths are matched as text decoded with ``surrogateescape``, so ``?`` and a
    character class match one character (``é`` is one, not two bytes) and a byte
    that is not UTF-8 counts as one character.
    """
    if not pattern.startswith("/") and not pattern.startswith("**"):
        raise PolicyError(f"exclude pattern {pattern!r} must be absolute (start with '/' or '**')")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            regex, i = _class(pattern, i)
            out.append(regex)
        else:
            out.append(re.escape(char))
            i += 1
    body = "".join(out)
    if body == "/":
        return "/.*"  # "/" excludes everything
    return body.removesuffix("/") + "(?:/.*)?"


@dataclass(frozen=True)
class Policy:
    """Which paths are checked and which attributes count."""

    include: tuple[str, ...] = ("/",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    ignore_attributes: tuple[str, ...] = ()
    one_filesystem: bool = True

    def __post_init__(self) -> None:
        # Canonical order, so a policy equals itself after a trip through the manifest.
        object.__setattr__(self, "ignore_attributes", tuple(sorted(set(self.ignore_attributes))))
        for path in self.include:
            if not path.startswith("/"):
                raise PolicyError(f"include path {path!r} must be absolute")
        unknown = sorted(set(self.ignore_attributes) - set(ATTRIBUTES))
        if unknown:
            raise PolicyError(
                f"unknown attribute(s) {', '.join(unknown)} in ignore_attributes; "
                f"known: {', '.join(ATTRIBUTES)}"
            )
        self._matcher  # noqa: B018 - compile now so a bad pattern fails at load time

    @cached_property
    def _matcher(self) -> re.Pattern[str] | None:
        if not self.exclude:
            return None
        parts = [f"(?:{_translate(pattern)})" for pattern in self.exclude]
        try:
            return re.compile("|".join(parts), re.DOTALL)
        except re.error as exc:
            raise PolicyError(f"invalid exclude pattern: {exc}") from exc

    def excludes(self, path: bytes) -> bool:
        """True when ``path`` (absolute inside the root) is mutable and never checked."""
        matcher = self._matcher
        if matcher is None:
            return False
        return matcher.fullmatch(path.decode("utf-8", "surrogateescape")) is not None

    def ignores(self, attribute: str) -> bool:
        return attribute in self.ignore_attributes

    def to_proto(self) -> manifest_pb2.Policy:
        return manifest_pb2.Policy(
            include=list(self.include),
            exclude=list(self.exclude),
            ignore_attributes=sorted(self.ignore_attributes),
            one_filesystem=self.one_filesystem,
        )

    @classmethod
    def from_proto(cls, message: manifest_pb2.Policy) -> Policy:
        return cls(
            include=tuple(message.include) or ("/",),
            exclude=tuple(message.exclude),
            ignore_attributes=tuple(message.ignore_attributes),
            one_filesystem=message.one_filesystem,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "ignore_attributes": sorted(self.ignore_attributes),
            "one_filesystem": self.one_filesystem,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        """Build from a parsed TOML table. ``extra_exclude`` adds to the defaults."""
        known = {"include", "exclude", "extra_exclude", "ignore_attributes", "one_filesystem"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown policy key(s): {', '.join(unknown)}")
        exclude = tuple(_strings(data, "exclude", DEFAULT_EXCLUDE))
        exclude += tuple(_strings(data, "extra_exclude", ()))
        one_filesystem = data.get("one_filesystem", True)
        if not isinstance(one_filesystem, bool):
            raise PolicyError("one_filesystem must be true or false")
        return cls(
            include=tuple(_strings(data, "include", ("/",))),
            exclude=exclude,
            ignore_attributes=tuple(_strings(data, "ignore_attributes", ())),
            one_filesystem=one_filesystem,
        )


def _strings(data: Mapping[str, Any], key: str, default: Iterable[str]) -> list[str]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"policy key {key!r} must be a list of strings")
    return value


def load_policy(path: str) -> Policy:
    """Read a policy TOML file (a ``[policy]`` table or top-level keys)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {path} is not valid TOML: {exc}") from exc
    table = data.get("policy", data)
    if not isinstance(table, dict):
        raise PolicyError(f"policy {path}: [policy] must be a table")
    return Policy.from_mapping(table)
