"""The root hash: a two-level Merkle tree over the set of entry leaf hashes.

Leaves are split into ``BUCKETS`` buckets by the first bits of the leaf hash.
A bucket's hash is SHA-256 over its leaves sorted bytewise; the root is
SHA-256 over a domain tag and every bucket hash in bucket order. A changed entry
therefore moves at most two buckets: recomputing the root after a few changes
re-hashes those buckets and the 32 KiB bucket vector, never every entry.
That is what lets the controller check drift evidence against a reported root
cheaply (:class:`RootIndex`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

BUCKETS = 1024
_TAG = b"corral/root/v1\x00"
_EMPTY = hashlib.sha256(b"").digest()


def bucket_of(leaf: bytes) -> int:
    """The bucket a leaf hash falls into (its first 10 bits)."""
    return ((leaf[0] << 8) | leaf[1]) & (BUCKETS - 1)


def _bucket_hash(leaves: Iterable[bytes | bytearray]) -> bytes:
    return hashlib.sha256(b"".join(sorted(leaves))).digest()


def _root(bucket_hashes: Iterable[bytes]) -> bytes:
    return hashlib.sha256(_TAG + b"".join(bucket_hashes)).digest()


def root_of_buckets(bucket_hashes: Iterable[bytes]) -> bytes:
    """The root over the 1024 bucket hashes, in bucket order (for incremental keepers)."""
    return _root(bucket_hashes)


def bucket_hash(leaves: Iterable[bytes | bytearray]) -> bytes:
    """The hash of one bucket holding ``leaves`` (in any order)."""
    return _bucket_hash(leaves)


def compute_root(leaves: Iterable[bytes]) -> bytes:
    """The root over a set of leaf hashes (their order does not matter)."""
    # Each bucket is one bytearray of concatenated 32-byte leaves: a tenth of the
    # memory of a list of bytes objects when a manifest has 100k entries.
    buckets = [bytearray() for _ in range(BUCKETS)]
    mask = BUCKETS - 1
    for leaf in leaves:
        buckets[((leaf[0] << 8) | leaf[1]) & mask] += leaf  # bucket_of, inlined
    return _root(_packed_bucket_hash(bucket) if bucket else _EMPTY for bucket in buckets)


def _packed_bucket_hash(packed: bytearray) -> bytes:
    """:func:`_bucket_hash` of the 32-byte leaves concatenated in ``packed``."""
    data = bytes(packed)  # slices of bytes are cheaper to make and compare than of a bytearray
    return _bucket_hash([data[i : i + 32] for i in range(0, len(data), 32)])


class RootIndex:
    """A mutable leaf set that recomputes the root by re-hashing only touched buckets."""

    def __init__(self, leaves: Iterable[bytes]) -> None:
        self._buckets: list[set[bytes]] = [set() for _ in range(BUCKETS)]
        for leaf in leaves:
            self._buckets[bucket_of(leaf)].add(leaf)
        self._hashes = [_bucket_hash(b) if b else _EMPTY for b in self._buckets]

    def root(self) -> bytes:
        return _root(self._hashes)

    def copy(self) -> RootIndex:
        clone = RootIndex.__new__(RootIndex)
        clone._buckets = [set(bucket) for bucket in self._buckets]
        clone._hashes = list(self._hashes)
        return clone

    def replace(self, *, remove: Iterable[bytes] = (), add: Iterable[bytes] = ()) -> None:
        """Remove and add leaves. Raises KeyError if a leaf to remove is absent."""
        touched: set[int] = set()
        for leaf in remove:
            index = bucket_of(leaf)
            self._buckets[index].remove(leaf)
            touched.add(index)
        for leaf in add:
            index = bucket_of(leaf)
            self._buckets[index].add(leaf)
            touched.add(index)
        for index in touched:
            bucket = self._buckets[index]
            self._hashes[index] = _bucket_hash(bucket) if bucket else _EMPTY
