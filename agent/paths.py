"""Paths are bytes end to end; this module turns them into text people and JSON can carry.

Linux names need not be UTF-8. For display and JSON, a path is decoded as UTF-8;
every byte that is not part of valid UTF-8, every ASCII control character
(0x00-0x1F, 0x7F: a file name must not be able to move a terminal's cursor or
break a table row) and every ``%`` itself is written as ``%XX`` (two upper-case
hex digits). The encoding is reversible: ``parse_display_path(display_path(p)) == p``
for every ``p``. A name that is valid UTF-8 and contains no ``%`` and no control
character reads exactly as it is.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"[%\x00-\x1f\x7f\udc80-\udcff]")
_UNESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"%{code - 0xDC00 if code >= 0xDC00 else code:02X}"


def display_path(path: bytes) -> str:
    """Text for ``path``: UTF-8 where valid; ``%XX`` for other bytes, controls and ``%``."""
    return _ESCAPE.sub(_escape, path.decode("utf-8", "surrogateescape"))


def parse_display_path(text: str) -> bytes:
    """The bytes behind a path written by :func:`display_path`."""
    return _UNESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
