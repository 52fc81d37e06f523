"""Image references: which ones name exactly one artifact, and how to say so when not.

A rollout must name an image that can never change under it. This module parses
references with the OCI distribution grammar (``reference := name [":" tag]
["@" digest]``), accepts only strict ``sha256`` digests, recognises immutable
provider ids (AMI ids), and refuses everything else with a message that says how
to pin it. Pure: no registry is contacted.

Decisions written down here:

- a path component is lowercase (the raw grammar would read ``Fleet/agent`` as a
  domain ``Fleet``; a first component counts as a domain only when it contains a
  ``.`` or a ``:``, is ``localhost`` or is a bracketed IPv6 address);
- the repository path (without the domain) is at most 255 characters;
- ``sha256:`` must be followed by exactly 64 lowercase hex digits (OCI forbids
  ``A-F``); other algorithms such as ``sha512`` are grammatical but refused by
  policy, so every baseline is comparable;
- ``name:tag@digest`` is legal and pinned; the tag is kept for display only;
- an AMI id is ``ami-`` and 8 or 17 lowercase hex digits (the two formats AWS issues).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from controller.errors import InvalidArgumentError

MAX_REPOSITORY_LENGTH = 255
DIGEST_PLACEHOLDER = "sha256:<64 hex>"
FIND_HINT = "(find it with `corral image list`)"

# The grammar, piece by piece (distribution/reference's reference.go).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_ALGORITHM = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*"
_ENCODED = r"[0-9a-zA-Z=_-]+"
_DIGEST = rf"{_ALGORITHM}:{_ENCODED}"

_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$",
    re.ASCII,
)
_PATH_COMPONENT_RE = re.compile(rf"^{_PATH_COMPONENT}$", re.ASCII)
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$", re.ASCII)
_AMI = re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$", re.ASCII)
_BARE_DIGEST = re.compile(rf"^{_DIGEST}$", re.ASCII)
# "sha256:<hex>" also parses as name "sha256" with a tag: read it as the digest it is.
_DIGEST_ALONE = re.compile(r"^sha(?:256|384|512):[0-9a-zA-Z]+$", re.ASCII)


class InvalidReferenceError(InvalidArgumentError, ValueError):
    """The text is not an image reference corral accepts (grammar or digest policy)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="invalid_reference")


class UnpinnedReferenceError(InvalidArgumentError, ValueError):
    """The reference is valid but can move (a tag, or no tag at all): refused for rollout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="unpinned")


class PinKind(Enum):
    """What makes a pinned reference immutable."""

    DIGEST = "digest"
    PROVIDER_ID = "provider_id"


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: ``name`` (domain included), optional ``tag`` and ``digest``."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def pinned(self) -> bool:
        """True when a digest fixes the artifact (a tag alone never does)."""
        return self.digest is not None

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class PinnedRef:
    """A reference to exactly one immutable artifact.

    ``pin`` is the immutable part: ``sha256:<64 hex>`` or a provider id such as
    ``ami-0123456789abcdef0``. ``name`` is empty for a provider id. ``str()`` is the
    canonical form (``name@sha256:...`` or the provider id); the tag is display only.
    """

    name: str
    pin: str
    kind: PinKind
    tag: str | None = None

    def __str__(self) -> str:
        if self.kind is PinKind.PROVIDER_ID:
            return self.pin
        return f"{self.name}@{self.pin}"


def is_provider_id(text: str) -> bool:
    """True for an immutable provider image id (an AMI id)."""
    return _AMI.match(text) is not None


def parse_digest(text: str) -> str:
    """``text`` if it is a strict sha256 digest; else InvalidReferenceError saying what is wrong."""
    if _SHA256.match(text):
        return text
    algorithm, sep, encoded = text.partition(":")
    if not sep or not _BARE_DIGEST.match(text):
        raise InvalidReferenceError(f"{text!r} is not a digest: expected {DIGEST_PLACEHOLDER}")
    if algorithm != "sha256":
        raise InvalidReferenceError(
            f"digest {text[:24]!r}…: algorithm {algorithm!r} is valid OCI but not supported "
            f"by corral's policy, which accepts only {DIGEST_PLACEHOLDER} "
            "(so every image is comparable)"
        )
    if encoded.lower() != encoded:
        raise InvalidReferenceError(
            f"digest {text!r} uses uppercase hex; OCI requires lowercase a-f: "
            f"sha256:{encoded.lower()}"
        )
    raise InvalidReferenceError(
        f"digest {text!r} has {len(encoded)} characters after 'sha256:'; "
        "a sha256 digest is exactly 64 lowercase hex digits"
    )


def parse_reference(text: str) -> ImageRef:
    """The parts of an OCI image reference. Raises InvalidReferenceError with the reason."""
    if not text or text != text.strip():
        raise InvalidReferenceError(f"image reference {text!r} is empty or has surrounding spaces")
    match = _REFERENCE.match(text)
    if match is None:
        lowered = _REFERENCE.match(text.lower())
        if lowered is not None:
            raise InvalidReferenceError(
                f"image reference {text!r}: repository names are lowercase; "
                f"write {lowered.group('name')!r}"
            )
        raise InvalidReferenceError(
            f"image reference {text!r} does not follow the OCI grammar name[:tag][@sha256:<64 hex>]"
        )
    domain, path = match.group("domain"), match.group("path")
    if domain is not None and not _is_domain(domain):
        # The grammar reads "Fleet/agent" as domain "Fleet"; a registry would not.
        if _PATH_COMPONENT_RE.match(domain) is None:
            raise InvalidReferenceError(
                f"image reference {text!r}: repository names are lowercase; "
                f"write {domain.lower()!r}, not {domain!r}"
            )
        path = f"{domain}/{path}"
    if len(path) > MAX_REPOSITORY_LENGTH:
        raise InvalidReferenceError(
            f"image reference {text[:40]!r}…: the repository name is {len(path)} "
            f"characters; at most {MAX_REPOSITORY_LENGTH} are allowed"
        )
    digest = match.group("digest")
    if digest is not None:
        digest = parse_digest(digest)
    return ImageRef(name=match.group("name"), tag=match.group("tag"), digest=digest)


def require_pinned(ref: str | ImageRef) -> PinnedRef:
    """The pinned form of ``ref``; UnpinnedReferenceError (saying how to pin) when it can move.

    Also raises InvalidReferenceError for text that is no reference at all.
    """
    if isinstance(ref, str):
        if is_provider_id(ref):
            return PinnedRef(name="", pin=ref, kind=PinKind.PROVIDER_ID)
        if _DIGEST_ALONE.match(ref):
            parse_digest(ref)
            raise UnpinnedReferenceError(
                f"image reference {ref!r} is a bare digest and names no image. "
                f"Write it as NAME@{ref} {FIND_HINT}"
            )
        parsed = parse_reference(ref)
    else:
        parsed = ref
    if parsed.digest is None:
        raise UnpinnedReferenceError(_unpinned_message(parsed))
    return PinnedRef(name=parsed.name, pin=parsed.digest, kind=PinKind.DIGEST, tag=parsed.tag)


@lru_cache(maxsize=4096)
def image_identity(text: str) -> str:
    """The immutable part of a reference (its digest or provider id), for comparisons.

    Two pinned references with the same digest name the same bytes whatever their
    name or tag. Text that is not a pinned reference is returned unchanged, so it
    compares equal only to itself.
    """
    try:
        return require_pinned(text).pin
    except ValueError:
        return text


def _is_domain(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def _unpinned_message(ref: ImageRef) -> str:
    if ref.tag is None:
        why = "a name without a digest means 'latest', and 'latest' moves"
    elif ref.tag == "latest":
        why = "'latest' moves"
    else:
        why = f"tag {ref.tag!r} can be moved to another image"
    return (
        f"image reference {str(ref)!r} is not pinned: {why}. "
        f"Pin it by digest: {ref.name}@{DIGEST_PLACEHOLDER} {FIND_HINT}"
    )
