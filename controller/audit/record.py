"""The audit record and its canonical encoding: what the hash chain commits to.

An ``Event`` is what happened (kind, time, actor, reason, the instance, group and
image it concerns, and kind-specific ``data``). A ``Record`` is an event placed in
the chain: it adds ``seq`` (gapless from 1), ``prev_hash`` (the hash of record
``seq - 1``) and ``hash``. The hash is SHA-256 over the canonical encoding of
every field but ``hash`` itself: JSON with sorted keys, no whitespace, UTF-8,
integers only (floats are refused because their text form is not canonical).
An auditor can recompute it with any JSON library; docs/audit.md shows how.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from controller.audit.errors import InvalidEventError

ENCODING_VERSION = 1
GENESIS_HASH = "0" * 64

# Bounds that keep one record small whatever a caller passes.
MAX_TEXT = 1024
MAX_DATA_BYTES = 64 * 1024

JsonValue: TypeAlias = bool | int | str | list["JsonValue"] | dict[str, "JsonValue"] | None


class EventKind(StrEnum):
    """Every kind of record; the value is what is stored and hashed."""

    INSTANCE_STATE = "instance.state"
    DRIFT_EVIDENCE = "instance.drift"
    TAINT = "instance.taint"
    SUSPICIOUS = "instance.suspicious"
    REPLACEMENT_STEP = "replacement.step"
    IMAGE_REGISTERED = "image.registered"
    GROUP_CREATED = "group.created"
    ROLLOUT = "group.rollout"
    ROLLBACK = "group.rollback"
    BREAKER_OPEN = "group.breaker_open"
    BREAKER_RESUME = "group.breaker_resume"
    CHECKPOINT = "audit.checkpoint"


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, before it has a place in the chain.

    ``instance_id`` is the instance the event is about and ``related_instance_id``
    a second one (the replacement of a replaced instance); both are indexed so an
    instance's history finds every event naming it. ``image`` is the image
    reference the event concerns (the one the instance runs, the one registered,
    the one rolled out to).
    """

    kind: EventKind
    at_ms: int
    actor: str
    reason: str = ""
    instance_id: str | None = None
    related_instance_id: str | None = None
    group: str | None = None
    image: str | None = None
    data: Mapping[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.at_ms, int) or self.at_ms < 0:
            raise InvalidEventError(f"at_ms must be a non-negative integer, got {self.at_ms!r}")
        if not self.actor:
            raise InvalidEventError("every audit event needs an actor (e.g. 'operator:alice')")
        for name in ("actor", "reason", "instance_id", "related_instance_id", "group", "image"):
            value = getattr(self, name)
            if value is not None:
                _check_text(name, value)
        size = len(canonical_json(dict(self.data)))
        # A checkpoint's fleet snapshot grows with the fleet; it is built by the log itself.
        if size > MAX_DATA_BYTES and self.kind != EventKind.CHECKPOINT:
            raise InvalidEventError(f"event data is {size} bytes, more than {MAX_DATA_BYTES}")


@dataclass(frozen=True, slots=True)
class Record:
    """An event at its place in the chain."""

    seq: int
    prev_hash: str
    hash: str
    event: Event

    def body(self) -> dict[str, JsonValue]:
        """Every hashed field, as the JSON object the canonical encoding serialises."""
        return record_body(self.seq, self.prev_hash, self.event)

    def to_json(self) -> dict[str, JsonValue]:
        """The body plus ``hash``: one line of an export."""
        out = self.body()
        out["hash"] = self.hash
        return out


def record_body(seq: int, prev_hash: str, event: Event) -> dict[str, JsonValue]:
    """The hashed fields of record ``seq`` holding ``event``."""
    return {
        "v": ENCODING_VERSION,
        "seq": seq,
        "prev": prev_hash,
        "at_ms": event.at_ms,
        "kind": str(event.kind),
        "actor": event.actor,
        "reason": event.reason,
        "instance": event.instance_id,
        "related": event.related_instance_id,
        "group": event.group,
        "image": event.image,
        "data": dict(event.data),
    }


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no floats: the same bytes for the same value."""
    _check_json(value, "data")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as error:
        raise InvalidEventError(f"value is not canonical JSON: {error}") from error


def hash_body(body: Mapping[str, JsonValue]) -> str:
    """The record hash: lowercase hex SHA-256 of the canonical body."""
    return hashlib.sha256(canonical_json(dict(body))).hexdigest()


def trusted_event(
    *,
    kind: EventKind,
    at_ms: int,
    actor: str,
    reason: str,
    instance_id: str | None,
    related_instance_id: str | None,
    group: str | None,
    image: str | None,
    data: Mapping[str, JsonValue],
) -> Event:
    """Rebuild an event read back from storage without re-validating it (queries only).

    Verification never uses this: it re-hashes the stored fields themselves
    (``row.row_digest``).
    """
    event = _new(Event)
    _set(event, "kind", kind)
    _set(event, "at_ms", at_ms)
    _set(event, "actor", actor)
    _set(event, "reason", reason)
    _set(event, "instance_id", instance_id)
    _set(event, "related_instance_id", related_instance_id)
    _set(event, "group", group)
    _set(event, "image", image)
    _set(event, "data", data)
    return event


# Bound once: trusted_event runs for every record a query reads back.
_new = object.__new__
_set = object.__setattr__


def make_record(seq: int, prev_hash: str, event: Event) -> Record:
    """Place ``event`` after the record whose hash is ``prev_hash``."""
    return Record(seq, prev_hash, hash_body(record_body(seq, prev_hash, event)), event)


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidEventError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise InvalidEventError(f"{name} is {len(value)} characters, more than {MAX_TEXT}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidEventError(f"{name} is not valid UTF-8 text") from error


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise InvalidEventError(f"{where}: floats are not canonical; use integers (ms, bytes)")
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEventError(f"{where}: object keys must be strings")
            _check_json(item, f"{where}.{key}")
        return
    raise InvalidEventError(f"{where}: {type(value).__name__} is not JSON")
