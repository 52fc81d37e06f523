"""Image references: which are pinned, which are refused, and what the refusal says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.refs import (
    InvalidReferenceError,
    PinKind,
    UnpinnedReferenceError,
    image_identity,
    is_provider_id,
    parse_digest,
    parse_reference,
    require_pinned,
)
from controller.errors import InvalidArgumentError

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "name", "tag"),
    [
        (f"web@{DIGEST}", "web", None),
        (f"web:v1.2@{DIGEST}", "web", "v1.2"),
        (f"localhost/web@{DIGEST}", "localhost/web", None),
        (f"localhost:5000/team/web:1@{DIGEST}", "localhost:5000/team/web", "1"),
        (f"registry.example.com:443/a/b/c@{DIGEST}", "registry.example.com:443/a/b/c", None),
        (f"[::1]:5000/web@{DIGEST}", "[::1]:5000/web", None),
        (f"[2001:db8::1]/web:Tag_1@{DIGEST}", "[2001:db8::1]/web", "Tag_1"),
        (f"Registry.Example.COM/web@{DIGEST}", "Registry.Example.COM/web", None),
        (f"a__b/c-d--e.f_g@{DIGEST}", "a__b/c-d--e.f_g", None),
        (f"fleet/agent@{DIGEST}", "fleet/agent", None),
    ],
)
def test_pinned_references_parse(text: str, name: str, tag: str | None) -> None:
    pinned = require_pinned(text)
    assert (pinned.name, pinned.tag, pinned.pin, pinned.kind) == (name, tag, DIGEST, PinKind.DIGEST)
    assert str(pinned) == f"{name}@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Fleet/agent@" + DIGEST, "lowercase"),
        ("fleet/Agent@" + DIGEST, "lowercase"),
        ("WEB@" + DIGEST, "lowercase"),
        (f"web@sha256:{HEX[:63]}", "63 characters"),
        (f"web@sha256:{HEX}0", "65 characters"),
        (f"web@sha256:{HEX.upper()}", "lowercase a-f"),
        (f"web@sha512:{HEX * 2}", "not supported by corral's policy"),
        (f"web@sha256:{HEX[:60]}zzzz", "characters after"),
        ("web@" + DIGEST + " ", "spaces"),
        ("", "empty"),
        ("web:" + "x" * 129, "OCI grammar"),
        ("web:-bad", "OCI grammar"),
        ("-web", "OCI grammar"),
        ("web//x", "OCI grammar"),
        ("a" * 256 + "@" + DIGEST, "at most 255"),
        ("registry.example.com/" + "a" * 256 + "@" + DIGEST, "at most 255"),
        ("wéb@" + DIGEST, "OCI grammar"),
        ("web:tæg@" + DIGEST, "OCI grammar"),
    ],
)
def test_invalid_references_are_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError, match=fragment) as caught:
        require_pinned(text)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidArgumentError)


def test_the_repository_limit_excludes_the_domain() -> None:
    assert require_pinned("registry.example.com/" + "a" * 255 + "@" + DIGEST).pin == DIGEST


def test_latest_is_refused_with_how_to_pin_it() -> None:
    with pytest.raises(UnpinnedReferenceError) as caught:
        require_pinned("web:latest")
    assert str(caught.value) == (
        "image reference 'web:latest' is not pinned: 'latest' moves. "
        "Pin it by digest: web@sha256:<64 hex> (find it with `corral image list`)"
    )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("web", "a name without a digest means 'latest'"),
        ("web:v2", "tag 'v2' can be moved"),
        ("localhost:5000/team/web:v2", "localhost:5000/team/web@sha256:<64 hex>"),
        (DIGEST, "bare digest"),
    ],
)
def test_tag_only_references_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(UnpinnedReferenceError, match=fragment) as caught:
        require_pinned(text)
    assert "sha256:" in str(caught.value)


def test_a_bare_sha512_digest_is_refused_for_its_algorithm() -> None:
    with pytest.raises(InvalidReferenceError, match="sha512"):
        require_pinned(f"sha512:{HEX * 2}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ami-12345678", True),
        ("ami-0123456789abcdef0", True),
        ("ami-0123456789ABCDEF0", False),
        ("ami-1234567", False),
        ("ami-0123456789abcdef", False),
        ("ami-0123456789abcdef01", False),
        ("ami-", False),
        ("web", False),
    ],
)
def test_ami_ids_are_immutable_provider_ids(text: str, expected: bool) -> None:
    assert is_provider_id(text) is expected
    if expected:
        pinned = require_pinned(text)
        assert (pinned.kind, pinned.pin, str(pinned)) == (PinKind.PROVIDER_ID, text, text)


def test_a_malformed_ami_id_is_just_an_unpinned_name() -> None:
    with pytest.raises(UnpinnedReferenceError):
        require_pinned("ami-1234567")


def test_parse_reference_keeps_every_part() -> None:
    ref = parse_reference(f"localhost:5000/web:v1@{DIGEST}")
    assert (ref.name, ref.tag, ref.digest, ref.pinned) == ("localhost:5000/web", "v1", DIGEST, True)
    assert str(ref) == f"localhost:5000/web:v1@{DIGEST}"
    assert not parse_reference("web:v1").pinned


def test_parse_digest_is_strict() -> None:
    assert parse_digest(DIGEST) == DIGEST
    with pytest.raises(InvalidReferenceError, match="not a digest"):
        parse_digest("nothing")


def test_image_identity_compares_by_digest() -> None:
    assert image_identity(f"web:v1@{DIGEST}") == image_identity(f"other@{DIGEST}") == DIGEST
    assert image_identity("web:latest") == "web:latest"
    assert image_identity(DIGEST) == DIGEST


_COMPONENT = st.from_regex(r"\A[a-z0-9]{1,5}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,5}){0,2}\Z")


@given(
    path=st.lists(_COMPONENT, min_size=1, max_size=4),
    tag=st.none() | st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z"),
    hexdigits=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_generated_references_round_trip(path: list[str], tag: str | None, hexdigits: str) -> None:
    name = "/".join(path)
    text = name + (f":{tag}" if tag else "") + f"@sha256:{hexdigits}"
    pinned = require_pinned(text)
    assert (pinned.name, pinned.tag, pinned.pin) == (name, tag, f"sha256:{hexdigits}")
    assert str(parse_reference(text)) == text


@given(st.text(max_size=80))
def test_any_text_is_either_pinned_or_refused_with_a_value_error(text: str) -> None:
    try:
        pinned = require_pinned(text)
    except ValueError as error:
        assert str(error)
    else:
        assert pinned.pin.startswith(("sha256:", "ami-"))
