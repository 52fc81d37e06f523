"""The hash chain, computed and checked without any storage: what ``verify`` means.

Record ``n`` commits to record ``n - 1`` through ``prev_hash``, so editing,
deleting or reordering any record breaks either its own hash or the link from
the record after it. The chain starts at a *base*: seq 1 after the genesis hash
(64 zeros), or, once old records were pruned, the checkpoint record the log was
pruned to. The stored *head* (latest seq and hash, kept apart from the records)
catches a deleted tail. Checkpoints may carry an HMAC-SHA256 signature over
their (seq, hash) so they can be trusted apart from the database.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TypeAlias

from controller.audit.errors import InvalidEventError
from controller.audit.record import GENESIS_HASH
from controller.audit.row import Row, row_digest


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the chain: record ``seq`` whose hash is ``hash`` (seq 0: the empty log)."""

    seq: int
    hash: str


GENESIS = Position(0, GENESIS_HASH)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint record's place, when it was taken, and its optional signature.

    ``anchor`` is the line to publish outside corral (a ticket, a transparency
    log, an auditor's mailbox): whoever holds it can later prove that the chain up
    to ``seq`` was not rewritten.
    """

    seq: int
    hash: str
    at_ms: int
    key_id: str | None = None
    signature: str | None = None

    @property
    def anchor(self) -> str:
        return f"corral-audit-checkpoint seq={self.seq} sha256={self.hash}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a verification; ``first_bad_seq`` names the first record that fails."""

    ok: bool
    checked: int
    first_seq: int
    last_seq: int
    last_hash: str
    first_bad_seq: int | None = None
    problem: str = ""

    def failed_at(self, seq: int, problem: str) -> VerifyResult:
        """This result, marked broken at record ``seq`` for ``problem``."""
        return replace(self, ok=False, first_bad_seq=seq, problem=problem)

    def describe(self) -> str:
        if self.ok:
            return (
                f"audit chain intact: {self.checked} records,"
                f" seq {self.first_seq}..{self.last_seq}, head sha256={self.last_hash}"
            )
        if self.first_bad_seq is None:
            return f"audit chain BROKEN: {self.problem}"
        return f"audit chain BROKEN at record {self.first_bad_seq}: {self.problem}"


Link: TypeAlias = tuple[int, str, str, str]
"""A record as verification sees it: (seq, prev hash, stored hash, the hash of its content)."""


def verify_chain(
    rows: Iterable[Row], *, base: Position = GENESIS, head: Position | None = None
) -> VerifyResult:
    """Check that ``rows`` (records as rows, in stored order) follow ``base`` and end at ``head``.

    Every row's hash is recomputed from its fields (``row.row_digest``), none is
    trusted. ``base`` is the position just before the first record; ``head``
    the stored latest position (None: do not check the tail). Pure: reads
    nothing else.
    """
    return verify_links(map(row_link, rows), base=base, head=head)


def row_link(row: Row) -> Link:
    """The row's link, its content re-hashed; raises InvalidEventError if it cannot be."""
    return row[0], row[10], row[11], row_digest(row)


def verify_links(
    links: Iterable[Link], *, base: Position = GENESIS, head: Position | None = None
) -> VerifyResult:
    """Check that ``links`` follow ``base`` and end at ``head`` (see :func:`verify_chain`).

    For a reader that hashes each record's content its own way (an export line
    is hashed as it stands); an InvalidEventError from ``links`` breaks the
    chain at the record being read.
    """
    walk = ChainWalk(base)
    try:
        for link in links:
            if not walk.add(link):
                break
    except InvalidEventError as error:
        walk.unreadable(error)
    return walk.result(head)


class ChainWalk:
    """The chain check fed one link at a time: for a reader that sees each record pass once.

    :func:`verify_links` feeds it from an iterable; an export writer feeds it
    each record it writes.
    """

    __slots__ = ("base", "broken", "expected_seq", "prev")

    def __init__(self, base: Position) -> None:
        self.base = base
        self.expected_seq = base.seq + 1
        self.prev = base.hash
        self.broken: VerifyResult | None = None

    def add(self, link: Link) -> bool:
        """Check the next record; False once the chain is broken (later ones are not looked at)."""
        if self.broken is not None:
            return False
        seq, prev_hash, stored, digest = link
        if seq != self.expected_seq or prev_hash != self.prev or digest != stored:
            problem = _problem(link, self.expected_seq, self.prev)
            self.broken = _broken_at(self.base, self.expected_seq, self.prev, problem)
            return False
        self.expected_seq += 1
        self.prev = stored
        return True

    def unreadable(self, error: InvalidEventError) -> None:
        """The next record's content could not be hashed: the chain breaks there."""
        if self.broken is None:
            problem = f"its content is not canonical JSON ({error}): edited"
            self.broken = _broken_at(self.base, self.expected_seq, self.prev, problem)

    def result(self, head: Position | None = None) -> VerifyResult:
        """The outcome so far; with ``head``, the records must also end there."""
        if self.broken is not None:
            return self.broken
        last = self.expected_seq - 1
        result = VerifyResult(True, last - self.base.seq, self.base.seq + 1, last, self.prev)
        return result if head is None else _check_head(result, head)


def _check_head(result: VerifyResult, head: Position) -> VerifyResult:
    """A chain ``result``, failed unless the stored ``head`` is where its records end."""
    last = Position(result.last_seq, result.last_hash)
    if not result.ok or head == last:
        return result
    if head.seq > last.seq:
        problem = f"records {last.seq + 1}..{head.seq} are missing (the head says {head.seq})"
        return result.failed_at(last.seq + 1, problem)
    problem = (
        f"the stored head (seq {head.seq}, sha256={head.hash}) does not match the last"
        f" record (seq {last.seq}, sha256={last.hash})"
    )
    return result.failed_at(head.seq + 1 if head.seq < last.seq else last.seq, problem)


def _problem(link: Link, expected_seq: int, prev: str) -> str:
    """Why ``link`` does not follow record ``expected_seq - 1`` (whose hash is ``prev``)."""
    seq, prev_hash, stored, digest = link
    if seq != expected_seq:
        if isinstance(seq, int) and seq > expected_seq:
            return f"record {expected_seq} is missing (the next stored record is {seq})"
        return f"record {seq} appears out of order (expected {expected_seq})"
    if prev_hash != prev:
        return (
            f"its prev hash {prev_hash} does not match record {expected_seq - 1}"
            f" (sha256={prev}): a record was reordered, deleted or rewritten"
        )
    return f"its content hashes to {digest}, not to its stored hash {stored}: edited"


def _broken_at(base: Position, bad: int, prev: str, problem: str) -> VerifyResult:
    """Broken at record ``bad``: every record before it checked, ``prev`` the last good hash."""
    return VerifyResult(False, bad - 1 - base.seq, base.seq + 1, bad - 1, prev, bad, problem)


def key_id(key: bytes) -> str:
    """A short public name for a signing key (first 16 hex of its SHA-256)."""
    return hashlib.sha256(b"corral-audit-key:" + key).hexdigest()[:16]


def sign_position(key: bytes, position: Position) -> str:
    """HMAC-SHA256 over ``corral-audit-checkpoint:v1:<seq>:<hash>``, hex."""
    message = f"corral-audit-checkpoint:v1:{position.seq}:{position.hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_checkpoint(checkpoint: Checkpoint, key: bytes | None) -> str:
    """Empty when the checkpoint's signature holds (or no key is given), else why not."""
    if key is None:
        return ""
    if checkpoint.signature is None:
        return f"checkpoint {checkpoint.seq} is not signed"
    if checkpoint.key_id != key_id(key):
        return f"checkpoint {checkpoint.seq} was signed with another key ({checkpoint.key_id})"
    expected = sign_position(key, Position(checkpoint.seq, checkpoint.hash))
    if not hmac.compare_digest(expected, checkpoint.signature):
        return f"checkpoint {checkpoint.seq} has a signature that does not match its hash"
    return ""


def verify_checkpoints(
    result: VerifyResult,
    checkpoints: Iterable[Checkpoint],
    record_hashes: dict[int, str],
    *,
    base: Position,
    key: bytes | None,
) -> VerifyResult:
    """Add checkpoint checks to a chain result: each matches its record, signatures hold.

    ``record_hashes`` maps each checkpoint record's seq to its stored hash. A
    pruned log (``base.seq > 0``) must start at a retained checkpoint.
    """
    if not result.ok:
        return result
    by_seq = {c.seq: c for c in checkpoints}
    if base.seq > 0 and base.seq + 1 not in by_seq:
        problem = f"the log starts at record {base.seq + 1}, which is not a checkpoint"
        return _broken_at(base, base.seq + 1, base.hash, problem)
    for seq in sorted(by_seq):
        checkpoint = by_seq[seq]
        stored = record_hashes.get(seq)
        if stored is None:
            problem = f"checkpoint {seq} names a record that is not in the log"
        elif stored != checkpoint.hash:
            problem = f"checkpoint {seq} says sha256={checkpoint.hash}, the record has {stored}"
        else:
            problem = check_checkpoint(checkpoint, key)
        if problem:
            return result.failed_at(seq, problem)
    return result
