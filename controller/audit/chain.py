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
from typing import Protocol

from controller.audit.errors import InvalidEventError
from controller.audit.record import GENESIS_HASH


class Linked(Protocol):
    """Anything verifiable: a Record, a stored row, an export line."""

    @property
    def seq(self) -> int: ...

    @property
    def prev_hash(self) -> str: ...

    @property
    def hash(self) -> str: ...

    def digest(self) -> str:
        """The hash recomputed from the content; raises InvalidEventError if unhashable."""
        ...


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


def verify_chain(
    records: Iterable[Linked], *, base: Position = GENESIS, head: Position | None = None
) -> VerifyResult:
    """Check that ``records`` (in stored order) follow ``base`` and end at ``head``.

    ``base`` is the position just before the first record; ``head`` the stored
    latest position (None: do not check the tail). Pure: reads nothing else.
    """
    expected_seq = base.seq + 1
    prev = base.hash
    checked = 0
    for record in records:
        problem = _check_one(record, expected_seq, prev)
        if problem:
            return _broken(
                base,
                checked=checked,
                prev=prev,
                last_seq=expected_seq - 1,
                bad=expected_seq,
                problem=problem,
            )
        checked += 1
        expected_seq += 1
        prev = record.hash
    last = Position(expected_seq - 1, prev)
    if head is not None and head != last:
        if head.seq > last.seq:
            problem = f"records {last.seq + 1}..{head.seq} are missing (the head says {head.seq})"
            return _broken(
                base,
                checked=checked,
                prev=prev,
                last_seq=last.seq,
                bad=last.seq + 1,
                problem=problem,
            )
        problem = (
            f"the stored head (seq {head.seq}, sha256={head.hash}) does not match the last"
            f" record (seq {last.seq}, sha256={last.hash})"
        )
        bad = head.seq + 1 if head.seq < last.seq else last.seq
        return _broken(
            base, checked=checked, prev=prev, last_seq=last.seq, bad=bad, problem=problem
        )
    return VerifyResult(True, checked, base.seq + 1, last.seq, last.hash)


def _check_one(record: Linked, expected_seq: int, prev: str) -> str:
    if record.seq != expected_seq:
        if record.seq > expected_seq:
            return f"record {expected_seq} is missing (the next stored record is {record.seq})"
        return f"record {record.seq} appears out of order (expected {expected_seq})"
    if record.prev_hash != prev:
        return (
            f"its prev hash {record.prev_hash} does not match record {expected_seq - 1}"
            f" (sha256={prev}): a record was reordered, deleted or rewritten"
        )
    try:
        actual = record.digest()
    except InvalidEventError as error:
        return f"its content is not canonical JSON ({error}): edited"
    if actual != record.hash:
        return f"its content hashes to {actual}, not to its stored hash {record.hash}: edited"
    return ""


def _broken(
    base: Position, *, checked: int, prev: str, last_seq: int, bad: int, problem: str
) -> VerifyResult:
    return VerifyResult(False, checked, base.seq + 1, last_seq, prev, bad, problem)


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
        return _broken(
            base, checked=0, prev=base.hash, last_seq=base.seq, bad=base.seq + 1, problem=problem
        )
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
