"""Hypothesis strategies for any protobuf message, built from its descriptor.

Every scalar field ranges over its whole wire type (int32, int64, uint32,
uint64 to their limits; any enum number, known or not; any text; any bytes),
mixed with values the controller knows (its image, group and instance ids, a
32-byte root), so generated requests get past the first lookups and reach the
deeper checks. Nested messages recurse to a bounded depth; repeated fields
hold a few items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 4


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """The whole range, with its edges and the signed 64-bit edge weighted in."""
    edges = [
        v for v in (low, high, 0, 1, 2**31 - 1, 2**63 - 1, 2**63, high - 1) if low <= v <= high
    ]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 20_000))


def texts(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(list(known)),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="ascii"), max_size=300),
        st.integers(0, 20_000).map(lambda n: "i-" + "x" * n),
    )


def binaries(known: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(list(known)),
        st.binary(max_size=64),
        st.binary(min_size=32, max_size=32),
        st.builds(lambda body: b"/" + body, st.binary(max_size=80)),
    )


class Builder:
    """Strategies for messages, mixing in the ``known`` texts and bytes."""

    def __init__(self, *, known_texts: Sequence[str], known_bytes: Sequence[bytes]) -> None:
        self.texts = texts(known_texts)
        self.binaries = binaries(known_bytes)

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        cls = GetMessageClass(descriptor)
        fields = {f.name: self.field(f, depth) for f in descriptor.fields}
        chosen = st.fixed_dictionaries({}, optional=fields)

        def build(values: dict[str, Any]) -> Message:
            message = cls()
            for name, value in values.items():
                field = descriptor.fields_by_name[name]
                if field.is_repeated:
                    target = getattr(message, name)
                    if field.type == F.TYPE_MESSAGE:
                        for item in value:
                            target.add().CopyFrom(item)
                    else:
                        target.extend(value)
                elif field.type == F.TYPE_MESSAGE:
                    getattr(message, name).CopyFrom(value)
                else:
                    setattr(message, name, value)
            return message

        return chosen.map(build)

    def field(self, field: FieldDescriptor, depth: int = 0) -> st.SearchStrategy[Any]:
        """Values of one field over its whole range (a list for a repeated field)."""
        single = self._single(field, depth)
        if field.is_repeated:
            return st.lists(single, max_size=3 if field.type == F.TYPE_MESSAGE else 5)
        return single

    def _single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == F.TYPE_MESSAGE:
            message_type = field.message_type
            assert message_type is not None  # a message field names its message
            if depth >= MAX_DEPTH:
                return st.just(GetMessageClass(message_type)())
            return self.message(message_type, depth + 1)
        if kind in INT_RANGES:
            return integers(*INT_RANGES[kind])
        if kind == F.TYPE_ENUM:  # proto3 enums are open: any int32 decodes
            enum_type = field.enum_type
            assert enum_type is not None  # an enum field names its enum
            known = [v.number for v in enum_type.values]
            return st.one_of(st.sampled_from(known), integers(-(2**31), 2**31 - 1))
        if kind == F.TYPE_BOOL:
            return st.booleans()
        if kind == F.TYPE_STRING:
            return self.texts
        if kind == F.TYPE_BYTES:
            return self.binaries
        if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return st.floats(allow_nan=True, allow_infinity=True, width=32)
        raise AssertionError(f"no strategy for field type {kind} ({field.full_name})")
