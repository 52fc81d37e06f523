"""Paths are bytes; display_path/parse_display_path carry them through text and JSON intact."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.paths import display_path, parse_display_path


@given(st.binary(max_size=64))
def test_any_bytes_round_trip(path: bytes) -> None:
    assert parse_display_path(display_path(path)) == path


@given(st.binary(max_size=64))
def test_display_text_survives_json(path: bytes) -> None:
    text = json.loads(json.dumps(display_path(path)))
    assert parse_display_path(text) == path


@given(st.text(max_size=32).filter(lambda t: "%" not in t and all(ord(c) >= 0x20 for c in t)))
def test_plain_utf8_without_percent_reads_as_is(text: str) -> None:
    text = text.replace("\x7f", "")
    assert display_path(text.encode()) == text


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (b"/etc/hostname", "/etc/hostname"),
        ("/données/é".encode(), "/données/é"),
        (b"/caf\xe9", "/caf%E9"),
        (b"/100%", "/100%25"),
        (b"/a\nb", "/a%0Ab"),
        (b"/\x1b[31mred", "/%1B[31mred"),
        (b"/del\x7f", "/del%7F"),
        (b"/\xed\xa0\x80", "/%ED%A0%80"),  # an encoded surrogate is not valid UTF-8
    ],
)
def test_escapes(path: bytes, shown: str) -> None:
    assert display_path(path) == shown
    assert parse_display_path(shown) == path


def test_parse_accepts_lower_case_hex() -> None:
    assert parse_display_path("/caf%e9") == b"/caf\xe9"
