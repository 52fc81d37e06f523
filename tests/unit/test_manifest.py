"""The manifest format: canonical encoding, decode validation, and the Merkle root."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ManifestError
from agent.manifest.format import (
    Entry,
    EntryError,
    EntryType,
    Manifest,
    decode,
    digest_of,
    entry_to_proto,
    leaf_hash,
    read_manifest,
    root_of,
)
from agent.manifest.merkle import BUCKETS, RootIndex, bucket_of, compute_root
from agent.manifest.policy import Policy
from protos.corral.v1 import manifest_pb2

u32 = st.integers(min_value=0, max_value=2**32 - 1)
paths = st.binary(min_size=0, max_size=12).map(lambda name: b"/" + name)
entries_st = st.builds(
    Entry,
    path=paths,
    type=st.sampled_from(list(EntryType)),
    mode=st.integers(min_value=0, max_value=0o7777),
    uid=u32,
    gid=u32,
    size=st.integers(min_value=0, max_value=2**64 - 1),
    sha256=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    link_target=st.binary(max_size=16),
    rdev_major=u32,
    rdev_minor=u32,
    error=st.sampled_from(list(EntryError)),
)
entry_lists = st.lists(entries_st, max_size=20, unique_by=lambda entry: entry.path)
policies = st.builds(
    Policy,
    include=st.sampled_from([("/",), ("/etc", "/usr")]),
    exclude=st.sampled_from([(), ("/tmp",), ("/var/log", "/home/*/.cache")]),
    ignore_attributes=st.sampled_from([(), ("mode",), ("uid", "gid")]),
    one_filesystem=st.booleans(),
)


def _entry(path: bytes, content: bytes = b"x") -> Entry:
    return Entry(path, EntryType.REGULAR, 0o644, 0, 0, len(content), content.ljust(32, b"\0"))


@settings(max_examples=60)
@given(entry_lists, policies)
def test_encode_decode_round_trip(entries: list[Entry], policy: Policy) -> None:
    manifest = Manifest.build(policy, entries)
    decoded = decode(manifest.encode())
    assert list(decoded.entries) == sorted(entries, key=lambda e: e.path)
    assert decoded.policy == policy
    assert decoded.root == manifest.root
    assert decoded.encode() == manifest.encode()


@settings(max_examples=40)
@given(entry_lists, st.randoms(use_true_random=False))
def test_root_and_bytes_do_not_depend_on_entry_order(
    entries: list[Entry], rnd: random.Random
) -> None:
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert root_of(shuffled) == root_of(entries)
    assert Manifest.build(Policy(), shuffled).encode() == Manifest.build(Policy(), entries).encode()


@settings(max_examples=40)
@given(entry_lists, st.data())
def test_root_index_incremental_update_equals_full_recompute(
    entries: list[Entry], data: st.DataObject
) -> None:
    leaves = [leaf_hash(entry) for entry in entries]
    index = RootIndex(leaves)
    assert index.root() == compute_root(leaves)
    removed = data.draw(st.lists(st.sampled_from(leaves), unique=True) if leaves else st.just([]))
    added = [leaf_hash(e) for e in data.draw(entry_lists)]
    added = [leaf for leaf in added if leaf not in leaves]
    before = index.copy()
    index.replace(remove=removed, add=added)
    expected = [leaf for leaf in leaves if leaf not in removed] + added
    assert index.root() == compute_root(expected)
    assert before.root() == compute_root(leaves)  # the copy is independent


def test_root_changes_when_any_attribute_changes() -> None:
    base = _entry(b"/etc/x")
    variants = [
        base._replace(mode=0o600),
        base._replace(uid=1),
        base._replace(gid=1),
        base._replace(size=2),
        base._replace(sha256=b"y" * 32),
        base._replace(type=EntryType.DIRECTORY),
        base._replace(path=b"/etc/y"),
        base._replace(error=EntryError.UNREADABLE),
    ]
    roots = {root_of([base])} | {root_of([variant]) for variant in variants}
    assert len(roots) == len(variants) + 1


def test_empty_manifest_has_a_fixed_root() -> None:
    assert Manifest.build(Policy(), []).root == compute_root([])
    assert decode(Manifest.build(Policy(), []).encode()).entries == []


def test_buckets_come_from_the_leaf_prefix() -> None:
    assert bucket_of(b"\x00\x00" + b"\0" * 30) == 0
    assert bucket_of(b"\xff\xff" + b"\0" * 30) == BUCKETS - 1


def test_digest_names_the_encoded_bytes() -> None:
    encoded = Manifest.build(Policy(), [_entry(b"/a")]).encode()
    digest = digest_of(encoded)
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 64
    assert digest == digest_of(bytes(encoded))
    assert digest != digest_of(Manifest.build(Policy(), [_entry(b"/b")]).encode())


def _message(entries: list[Entry], *, root: bytes | None = None, version: int = 1) -> bytes:
    manifest = Manifest.build(Policy(), entries)
    message = manifest_pb2.Manifest()
    message.ParseFromString(manifest.encode())
    message.format_version = version
    message.ClearField("entries")
    message.entries.extend(entry_to_proto(entry) for entry in entries)
    message.root = manifest.root if root is None else root
    return message.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (b"", "empty"),
        (b"\xff\xff\xff", "not a corral manifest"),
        (_message([_entry(b"/a")], version=2), "format version 2"),
        (_message([_entry(b"/b"), _entry(b"/a")]), "not sorted"),
        (_message([_entry(b"/a"), _entry(b"/a")]), "not sorted and unique"),
        (_message([_entry(b"/a")], root=b"\0" * 32), "corrupt"),
        (_message([_entry(b"relative")]), "not absolute"),
    ],
)
def test_decode_rejects_bad_manifests(encoded: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        decode(encoded)


def test_decode_rejects_unknown_entry_type() -> None:
    message = manifest_pb2.Manifest(format_version=1)
    message.entries.add(path=b"/a", type=99)
    with pytest.raises(ManifestError):
        decode(message.SerializeToString())


def test_decode_rejects_an_invalid_baked_policy() -> None:
    message = manifest_pb2.Manifest(format_version=1, root=compute_root([]))
    message.policy.exclude.append("relative/pattern")
    with pytest.raises(ManifestError, match="policy"):
        decode(message.SerializeToString())


def test_read_manifest_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "manifest.pb"
    encoded = Manifest.build(Policy(), [_entry(b"/a")]).encode()
    good.write_bytes(encoded)
    manifest, digest = read_manifest(str(good))
    assert digest == digest_of(encoded)
    assert [entry.path for entry in manifest.entries] == [b"/a"]
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"garbage!")
    with pytest.raises(ManifestError, match=str(bad)):
        read_manifest(str(bad))
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(str(tmp_path / "missing.pb"))


def _documented_root(leaves: list[bytes]) -> bytes:
    """The reference computation from docs/manifest.md, with hashlib alone."""
    hashes = [hashlib.sha256(leaf).digest() for leaf in leaves]
    buckets: list[list[bytes]] = [[] for _ in range(1024)]
    for h in hashes:
        buckets[((h[0] << 8) | h[1]) & 1023].append(h)
    vector = b"".join(hashlib.sha256(b"".join(sorted(b))).digest() for b in buckets)
    return hashlib.sha256(b"corral/root/v1\0" + vector).digest()


@settings(max_examples=20)
@given(entry_lists)
def test_root_follows_the_documented_algorithm(entries: list[Entry]) -> None:
    leaves = [entry_to_proto(e).SerializeToString(deterministic=True) for e in entries]
    assert root_of(entries) == _documented_root(leaves)
