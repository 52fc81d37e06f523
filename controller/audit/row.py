"""A record as one flat row: how the logs keep it and how bulk readers take it.

A :data:`Row` holds a record's fields in the stored column order
(``sql_queries.COLUMNS``): ``seq, at_ms, kind, actor, reason, instance,
related, group, image, data, prev, hash``. ``data`` is the canonical JSON text
where a log stores text (SQLite, PostgreSQL, the controller's API) and the
decoded object where it already is one (an export line, the memory log).

Every log hands out rows (``AuditLog.rows``); :func:`record_from_row` is the
one way a row becomes a :class:`Record`, and ``records()`` is rows passed
through it. Readers of a whole log (the report's fold, the export writer,
verification) take the rows themselves: no event object per record, ``data``
decoded (:func:`row_data`) only where a field of it is needed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import TypeAlias

from controller.audit.errors import AuditError, InvalidEventError
from controller.audit.record import (
    ENCODING_VERSION,
    EventKind,
    JsonValue,
    Record,
    canonical_json,
    trusted_event,
)

Data: TypeAlias = str | Mapping[str, JsonValue]
Row: TypeAlias = tuple[
    int, int, str, str, str, str | None, str | None, str | None, str | None, Data, str, str
]

KINDS: dict[str, EventKind] = {str(kind): kind for kind in EventKind}
"""Every stored kind and its EventKind; a row of any other kind is unreadable."""

_decode = json.JSONDecoder().raw_decode
_quote = encode_basestring


def unreadable(seq: object, why: object) -> AuditError:
    """The error for a row that cannot be read back (verification says more)."""
    return AuditError(f"record {seq} is unreadable ({why}); run `corral audit verify`")


def row_data(row: Row) -> Mapping[str, JsonValue]:
    """The row's ``data`` as an object; raises AuditError when it is not one."""
    data = row[9]
    if not isinstance(data, str):
        return data
    try:
        value, end = _decode(data)
    except ValueError as error:
        raise unreadable(row[0], error) from error
    if end != len(data) or not isinstance(value, dict):
        raise unreadable(row[0], "its data is not one JSON object")
    return value


def record_from_row(row: Row) -> Record:
    """The record a row holds; raises AuditError when it cannot be read."""
    seq, at_ms, kind, actor, reason, instance, related, group, image, _, prev, digest = row
    event_kind = KINDS.get(kind)
    if event_kind is None:
        raise unreadable(seq, f"unknown kind {kind!r}")
    event = trusted_event(
        kind=event_kind,
        at_ms=int(at_ms),
        actor=actor,
        reason=reason,
        instance_id=instance,
        related_instance_id=related,
        group=group,
        image=image,
        data=row_data(row),
    )
    return Record(int(seq), prev, digest, event)


def row_of(record: Record) -> Row:
    """A record as a row (``data`` stays the event's object)."""
    event = record.event
    return (
        record.seq,
        event.at_ms,
        str(event.kind),
        event.actor,
        event.reason,
        event.instance_id,
        event.related_instance_id,
        event.group,
        event.image,
        event.data,
        record.prev_hash,
        record.hash,
    )


def row_text(row: Row) -> str:
    """The row's canonical body: the text its hash covers.

    Built by concatenation in sorted key order: stored ``data`` text is used
    as it is, so for a row an honest writer stored the text is exactly
    ``canonical_json`` of the record's body (a test holds them equal), and for
    an edited row it differs, as it must. Raises InvalidEventError when a
    field holds something no writer stores.
    """
    head, tail = row_halves(row)
    return head + tail


def row_halves(row: Row) -> tuple[str, str]:
    """The row's canonical body in two: before and after where an export line has ``"hash"``."""
    seq, at_ms, kind, actor, reason, instance, related, group, image, data, prev, _ = row
    try:
        if type(seq) is not int or type(at_ms) is not int:
            raise TypeError("seq and at_ms must be integers")
        # One C call per field (it raises TypeError for anything but text): the hot loop
        # of verifying and exporting a million records.
        return (
            f'{{"actor":{_quote(actor)},"at_ms":{at_ms},'
            f'"data":{data if type(data) is str else _data(data)},'
            f'"group":{"null" if group is None else _quote(group)},',
            f'"image":{"null" if image is None else _quote(image)},'
            f'"instance":{"null" if instance is None else _quote(instance)},'
            f'"kind":{_quote(kind)},"prev":{_quote(prev)},"reason":{_quote(reason)},'
            f'"related":{"null" if related is None else _quote(related)},"seq":{seq},'
            f'"v":{ENCODING_VERSION}}}',
        )
    except TypeError as error:
        raise InvalidEventError(f"a stored field is not text or integer: {error}") from error


def export_line(head: str, tail: str, digest: str) -> str:
    """A record's export line: its body's halves (:func:`row_halves`) around its hash.

    Raises InvalidEventError when ``digest`` is not text (a stored row can hold anything).
    """
    try:
        return f'{head}"hash":{_quote(digest)},{tail}'
    except TypeError as error:
        raise InvalidEventError(f"the stored hash is not text: {error}") from error


def row_digest(row: Row) -> str:
    """The hash of the row's content, recomputed (verification compares it with ``hash``)."""
    return text_digest(row_text(row))


def text_digest(body: str) -> str:
    """The hash of a record whose canonical body is ``body``."""
    try:
        return hashlib.sha256(body.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as error:
        raise InvalidEventError(f"a stored field is not UTF-8 text: {error}") from error


def _data(value: object) -> str:
    if isinstance(value, Mapping):
        return canonical_json(dict(value)).decode("utf-8")
    raise TypeError(f"expected JSON text or an object, found {type(value).__name__}")
