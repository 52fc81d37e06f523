"""Pages of list RPCs: sizes, opaque tokens bound to their filter, stable under changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.api.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from controller.api.paging import decode_token, encode_token, page_of, page_size_of
from controller.errors import InvalidArgumentError


def _all(items: list[str], *, size: int, scope: str = "s") -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        page = page_of(items, key=str, scope=scope, page_size=size, page_token=token)
        seen.extend(page.items)
        token = page.next_page_token
        if not token:
            return seen


@given(st.sets(st.text(max_size=8), max_size=40), st.integers(1, 12))
def test_following_pages_yields_every_item_once_in_key_order(items: set[str], size: int) -> None:
    assert _all(list(items), size=size) == sorted(items)


def test_sizes_default_and_cap() -> None:
    assert page_size_of(0) == DEFAULT_PAGE_SIZE
    assert page_size_of(10**9) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgumentError, match="page_size"):
        page_size_of(-1)


def test_a_token_only_works_for_its_scope_and_must_decode() -> None:
    token = encode_token("instances/web", "i-1")
    assert decode_token("instances/web", token) == "i-1"
    for scope, bad in (("instances/", token), ("s", "!!"), ("s", "x" * 2000), ("s", "é")):
        with pytest.raises(InvalidArgumentError, match="page_token"):
            decode_token(scope, bad)


def test_items_added_or_removed_between_pages_never_repeat_or_skip_survivors() -> None:
    first = page_of(["a", "b", "c", "d"], key=str, scope="s", page_size=2, page_token="")
    assert first.items == ["a", "b"]
    changed = ["0", "b", "c", "e"]  # "a" and "d" gone, "0" and "e" new
    second = page_of(changed, key=str, scope="s", page_size=2, page_token=first.next_page_token)
    assert second.items == ["c", "e"] and not second.next_page_token
