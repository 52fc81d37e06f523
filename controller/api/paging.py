"""Pages of a list RPC (AIP-158): ``page_size``, ``page_token``, ``next_page_token``.

A page is cut from the store's full list in key order; the token is the last key
served, with the filter it was issued for, base64url-encoded JSON. It is opaque
to clients (docs/api.md) and carries no secret: a client that forges one can
only start a listing at a key of its choice, which it may list anyway. A token
for another filter, or that does not decode, is INVALID_ARGUMENT. Items added
or removed between pages never make a listing repeat or skip an item that
stayed: the next page starts after the last key served, not at an offset.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from controller.api.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PAGE_TOKEN_CHARS
from controller.errors import InvalidArgumentError

T = TypeVar("T")
_VERSION = 1


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of items and the token of the next one ("" on the last page)."""

    items: list[T]
    next_page_token: str


def page_size_of(requested: int) -> int:
    """The number of items to serve: the default for 0, at most :data:`MAX_PAGE_SIZE`."""
    if requested < 0:
        raise InvalidArgumentError(
            f"page_size: {requested} is negative; give 0 (default {DEFAULT_PAGE_SIZE}) "
            f"to {MAX_PAGE_SIZE}",
            reason="malformed",
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(scope: str, last_key: str) -> str:
    raw = json.dumps({"v": _VERSION, "s": scope, "k": last_key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")


def decode_token(scope: str, token: str) -> str:
    """The last key served before ``token``; INVALID_ARGUMENT unless issued for ``scope``."""
    bad = InvalidArgumentError(
        "page_token: is not a token this controller issued for this request "
        "(start again without one)",
        reason="malformed",
    )
    if len(token) > PAGE_TOKEN_CHARS or not token.isascii():
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        raise bad from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _VERSION
        or data.get("s") != scope
        or not isinstance(data.get("k"), str)
    ):
        raise bad
    key: str = data["k"]
    return key


def page_of(
    items: Iterable[T],
    *,
    key: Callable[[T], str],
    scope: str,
    page_size: int,
    page_token: str,
) -> Page[T]:
    """The page of ``items`` (ordered by ``key``) that ``page_token`` asks for."""
    size = page_size_of(page_size)
    after = decode_token(scope, page_token) if page_token else None
    ordered = sorted(items, key=key)
    keys = [key(item) for item in ordered]
    start = 0 if after is None else bisect.bisect_right(keys, after)
    chunk = ordered[start : start + size]
    more = start + size < len(ordered)
    return Page(chunk, encode_token(scope, keys[start + size - 1]) if more else "")
