"""The hand-written manifest encoder writes exactly the bytes protobuf writes, and the same root.

agent.manifest.format encodes entries itself for speed. These properties pin it to the
reference: protobuf's own deterministic serialization, and the root computed
from protobuf-encoded leaves with the straightforward Merkle definition.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.manifest.format import (
    FORMAT_VERSION,
    Entry,
    EntryError,
    EntryType,
    Manifest,
    decode,
    encode_entry,
    entry_to_proto,
    leaf_hash,
    root_of,
)
from agent.manifest.merkle import BUCKETS, RootIndex
from agent.manifest.policy import Policy
from protos.corral.v1 import manifest_pb2

UINT32 = st.integers(0, 2**32 - 1)
EDGE_INTS = st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**21, 2**28, 2**32 - 1])

entries = st.builds(
    Entry,
    path=st.binary(min_size=1, max_size=120).map(lambda raw: b"/" + raw),
    type=st.sampled_from(EntryType),
    mode=st.one_of(st.integers(0, 0o7777), EDGE_INTS),
    uid=st.one_of(UINT32, EDGE_INTS),
    gid=st.one_of(UINT32, EDGE_INTS),
    size=st.one_of(st.integers(0, 2**64 - 1), EDGE_INTS),
    sha256=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    link_target=st.one_of(st.just(b""), st.binary(max_size=200)),
    rdev_major=st.one_of(UINT32, st.just(0)),
    rdev_minor=st.one_of(UINT32, st.just(0)),
    error=st.sampled_from(EntryError),
)


def reference_encode_entry(entry: Entry) -> bytes:
    return entry_to_proto(entry).SerializeToString(deterministic=True)


def reference_root(items: list[Entry]) -> bytes:
    """The Merkle root by its definition, from protobuf-encoded leaves."""
    buckets: list[list[bytes]] = [[] for _ in range(BUCKETS)]
    for entry in items:
        leaf = hashlib.sha256(reference_encode_entry(entry)).digest()
        buckets[((leaf[0] << 8) | leaf[1]) % BUCKETS].append(leaf)
    hashes = [hashlib.sha256(b"".join(sorted(bucket))).digest() for bucket in buckets]
    return hashlib.sha256(b"corral/root/v1\x00" + b"".join(hashes)).digest()


def reference_manifest_bytes(manifest: Manifest) -> bytes:
    message = manifest_pb2.Manifest(
        format_version=FORMAT_VERSION, policy=manifest.policy.to_proto(), root=manifest.root
    )
    message.entries.extend(entry_to_proto(entry) for entry in manifest.entries)
    return message.SerializeToString(deterministic=True)


@settings(max_examples=200)
@given(entries)
def test_an_entry_encodes_to_the_protobuf_bytes(entry: Entry) -> None:
    assert encode_entry(entry) == reference_encode_entry(entry)
    assert leaf_hash(entry) == hashlib.sha256(reference_encode_entry(entry)).digest()


@settings(max_examples=30)
@given(st.lists(entries, max_size=40, unique_by=lambda entry: entry.path))
def test_a_manifest_encodes_to_the_protobuf_bytes_with_the_same_root(items: list[Entry]) -> None:
    policy = Policy(include=("/", "/usr"), exclude=("/tmp",), ignore_attributes=("mode",))
    manifest = Manifest.build(policy, items)

    assert manifest.root == reference_root(items) == root_of(items)
    assert manifest.encode() == reference_manifest_bytes(manifest)
    rebuilt = Manifest(policy=manifest.policy, entries=manifest.entries, root=manifest.root)
    assert rebuilt.encode() == manifest.encode()  # without the records kept by build()
    assert decode(manifest.encode()).entries == manifest.entries


def test_an_empty_manifest_and_an_empty_policy() -> None:
    manifest = Manifest.build(Policy(include=("/",), exclude=()), [])
    assert manifest.encode() == reference_manifest_bytes(manifest)
    assert manifest.root == reference_root([])


@given(st.lists(entries, min_size=1, max_size=30, unique_by=lambda entry: entry.path))
def test_the_incremental_root_agrees(items: list[Entry]) -> None:
    index = RootIndex(leaf_hash(entry) for entry in items[1:])
    index.replace(add=[leaf_hash(items[0])])
    assert index.root() == root_of(items)
