"""The record encoding auditors re-hash by hand, and the event constructors' bounds."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.manifest.diff import Change, ChangeKind
from controller.audit import events as ev
from controller.audit.errors import InvalidEventError
from controller.audit.record import (
    Event,
    EventKind,
    JsonValue,
    canonical_json,
    make_record,
)
from controller.audit.row import export_line, row_digest, row_halves, row_text


def test_hash_is_sha256_of_sorted_compact_utf8_json() -> None:
    event = ev.instance_transition(
        "i-é",
        at_ms=5,
        actor="agent:i-é",
        group="web",
        image="web@sha256:" + "a" * 64,
        from_state="pending",
        to_state="conformant",
        reason="first report",
    )
    record = make_record(1, "0" * 64, event)
    body = record.body()
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record.hash == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert b" " not in canonical_json(body).replace(b"first report", b"")
    assert "i-é".encode() in canonical_json(body)


def test_pinned_vector_never_changes() -> None:
    """A change to the encoding would orphan every stored chain: pin one hash."""
    event = Event(
        kind=EventKind.BREAKER_RESUME,
        at_ms=1,
        actor="operator:alice",
        reason="r",
        data={"action": "x"},
    )
    assert make_record(1, "0" * 64, event).hash == PINNED


PINNED = hashlib.sha256(
    b'{"actor":"operator:alice","at_ms":1,"data":{"action":"x"},"group":null,"image":null,'
    b'"instance":null,"kind":"group.breaker_resume","prev":"' + b"0" * 64 + b'","reason":"r",'
    b'"related":null,"seq":1,"v":1}'
).hexdigest()


@pytest.mark.parametrize(
    "data",
    [{"x": 1.5}, {"x": float("nan")}, {"x": {1: 2}}, {"x": object()}, {"x": "a" * 70_000}],
)
def test_non_canonical_or_oversized_data_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidEventError):
        Event(kind=EventKind.BREAKER_RESUME, at_ms=1, actor="controller", data=data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"actor": ""}, {"at_ms": -1}, {"reason": "x" * 2000}, {"actor": "\ud800"}],
)
def test_bad_fields_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "kind": EventKind.BREAKER_RESUME,
        "at_ms": 1,
        "actor": "controller",
    }
    fields.update(kwargs)
    with pytest.raises(InvalidEventError):
        Event(**fields)  # type: ignore[arg-type]


def test_drift_evidence_stays_bounded() -> None:
    paths = [f"/etc/file-{n}" + "x" * 1000 for n in range(500)]
    event = ev.drift_evidence(
        "i-1",
        at_ms=1,
        actor="agent:i-1",
        group="web",
        image="img",
        kind="file",
        added=500,
        first_paths=paths,
    )
    assert len(event.data["first_paths"]) == ev.MAX_EVIDENCE_PATHS  # type: ignore[arg-type]
    assert event.data["paths_truncated"] is True
    assert len(canonical_json(dict(event.data))) < 8_000


def test_summarize_changes_counts_kinds_and_keeps_first_paths() -> None:
    changes = [Change(ChangeKind.ADDED, b"/etc/\xffnew", None)] + [
        Change(ChangeKind.MODIFIED, f"/bin/{n}".encode(), None, ("content",)) for n in range(30)
    ]
    summary = ev.summarize_changes(changes)
    assert (summary["added"], summary["removed"], summary["modified"]) == (1, 0, 30)
    assert summary["first_paths"][0] == "/etc/%FFnew"
    assert len(summary["first_paths"]) == ev.MAX_EVIDENCE_PATHS


@pytest.mark.parametrize(
    "make",
    [
        lambda: ev.instance_transition(
            "i", at_ms=1, actor="c", group="g", image="x", from_state=None, to_state="bogus"
        ),
        lambda: ev.taint(
            "i",
            at_ms=1,
            actor="c",
            group="g",
            image="x",
            source="martian",
            drift_kind="file",
            reason="",
        ),
        lambda: ev.taint(
            "i",
            at_ms=1,
            actor="c",
            group="g",
            image="x",
            source="agent",
            drift_kind="vibes",
            reason="",
        ),
        lambda: ev.drift_evidence("i", at_ms=1, actor="c", group="g", image="x", kind="manual"),
    ],
)
def test_constructors_refuse_unknown_words(make: object) -> None:
    with pytest.raises(InvalidEventError):
        make()  # type: ignore[operator]


texts = st.text(max_size=30)
optional = st.none() | texts
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(1, 2**40),
    at_ms=st.integers(0, 2**45),
    kind=st.sampled_from(list(EventKind)),
    actor=texts.filter(bool),
    reason=texts,
    instance=optional,
    related=optional,
    group=optional,
    image=optional,
    data=st.dictionaries(texts, json_values, max_size=5),
)
def test_the_stored_row_hash_and_export_line_equal_the_records(
    seq: int,
    at_ms: int,
    kind: EventKind,
    actor: str,
    reason: str,
    instance: str | None,
    related: str | None,
    group: str | None,
    image: str | None,
    data: dict[str, JsonValue],
) -> None:
    try:
        event = Event(
            kind=kind,
            at_ms=at_ms,
            actor=actor,
            reason=reason,
            instance_id=instance,
            related_instance_id=related,
            group=group,
            image=image,
            data=data,
        )
    except InvalidEventError:
        return  # e.g. a lone surrogate: refused before it could be stored
    record = make_record(seq, "ab" * 32, event)
    stored = (seq, at_ms, str(kind), actor, reason, instance, related, group, image)
    row = (*stored, canonical_json(data).decode("utf-8"), "ab" * 32, record.hash)
    assert row_digest(row) == record.hash
    assert row_text(row).encode("utf-8") == canonical_json(record.body())
    line = export_line(*row_halves(row), record.hash)
    assert line.encode("utf-8") == canonical_json(record.to_json())
    as_object = (*stored, data, "ab" * 32, record.hash)  # data decoded, as an export line has it
    assert row_text(as_object) == row_text(row)
