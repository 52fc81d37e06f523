"""Paths are bytes end to end; this module turns them into text people and JSON can carry.

Linux names need not be UTF-8. For display and JSON, a path is decoded as UTF-8;
every byte that is not part of valid UTF-8, and every ``%`` itself, is written as
``%XX`` (two upper-case hex digits). The encoding is reversible:
``parse_display_path(display_path(p)) == p`` for every ``p``. A name that is
valid UTF-8 and contains no ``%`` reads exactly as it is.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"[%\udc80-\udcff]")
_UNESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char == "%":
        return "%25"
    return f"%{ord(char) - 0xDC00:02X}"


def display_path(path: bytes) -> str:
    """Text for ``path``: UTF-8 where valid, ``%XX`` for other bytes and for ``%``."""
    return _ESCAPE.sub(_escape, path.decode("utf-8", "surrogateescape"))


def parse_display_path(text: str) -> bytes:
    """The bytes behind a path written by :func:`display_path`."""
    return _UNESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
