"""An in-memory audit log: the default when the controller runs without a data dir, and tests.

It keeps the same chain, head, base and checkpoints as the SQLite adapter and
answers queries by replaying its records with the pure functions in
``queries``. A lock serialises appends so the chain cannot fork.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from controller.audit import queries
from controller.audit.chain import (
    GENESIS,
    Checkpoint,
    Position,
    VerifyResult,
    key_id,
    sign_position,
    verify_chain,
    verify_checkpoints,
)
from controller.audit.errors import CheckpointError
from controller.audit.record import Event, EventKind, Record, make_record
from controller.audit.row import Row, row_of
from controller.audit.snapshot import checkpoint_event, clamp


class MemoryAuditLog:
    """An ``AuditLog`` held in a list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._base = GENESIS
        self._head = GENESIS
        self._head_ms = 0
        self._checkpoints: dict[int, Checkpoint] = {}

    def append(self, event: Event) -> Record:
        with self._lock:
            return self._append_locked(event)

    def append_all(self, events: Sequence[Event]) -> list[Record]:
        """Append ``events`` in order, all or none: one that cannot be recorded appends nothing.

        The memory store calls this with a state change's events, so the change
        and its records happen together (as one SQLite transaction does).
        """
        with self._lock:
            seq, prev, head_ms = self._head.seq, self._head.hash, self._head_ms
            batch: list[Record] = []
            for event in events:
                record = make_record(seq + 1, prev, clamp(event, head_ms))
                seq, prev, head_ms = record.seq, record.hash, record.event.at_ms
                batch.append(record)
            if batch:
                self._records.extend(batch)
                self._head = Position(seq, prev)
                self._head_ms = head_ms
            return batch

    def _append_locked(self, event: Event) -> Record:
        record = make_record(self._head.seq + 1, self._head.hash, clamp(event, self._head_ms))
        self._records.append(record)
        self._head = Position(record.seq, record.hash)
        self._head_ms = record.event.at_ms
        return record

    def head(self) -> Position:
        with self._lock:
            return self._head

    def records(
        self, *, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[Record]:
        with self._lock:
            snapshot = list(self._records)
        for record in snapshot:
            at = record.event.at_ms
            if (since_ms is None or at >= since_ms) and (until_ms is None or at <= until_ms):
                yield record

    def rows(self, *, since_ms: int | None = None, until_ms: int | None = None) -> Iterator[Row]:
        return map(row_of, self.records(since_ms=since_ms, until_ms=until_ms))

    def verify(self, *, key: bytes | None = None) -> VerifyResult:
        with self._lock:
            records, base, head = list(self._records), self._base, self._head
            checkpoints = list(self._checkpoints.values())
        result = verify_chain(map(row_of, records), base=base, head=head)
        wanted = {c.seq for c in checkpoints}
        hashes = {r.seq: r.hash for r in records if r.seq in wanted}
        return verify_checkpoints(result, checkpoints, hashes, base=base, key=key)

    def checkpoint(self, *, at_ms: int, actor: str, key: bytes | None = None) -> Checkpoint:
        with self._lock:
            state = queries.replay(self._records)
            event = checkpoint_event(self._head, state, at_ms=at_ms, actor=actor)
            record = self._append_locked(event)
            position = Position(record.seq, record.hash)
            checkpoint = Checkpoint(
                record.seq,
                record.hash,
                record.event.at_ms,
                key_id(key) if key is not None else None,
                sign_position(key, position) if key is not None else None,
            )
            self._checkpoints[record.seq] = checkpoint
            return checkpoint

    def checkpoints(self) -> list[Checkpoint]:
        with self._lock:
            return [self._checkpoints[s] for s in sorted(self._checkpoints)]

    def prune_before(self, checkpoint: Checkpoint) -> int:
        with self._lock:
            known = self._checkpoints.get(checkpoint.seq)
            if known is None or known.hash != checkpoint.hash:
                raise CheckpointError(f"no retained checkpoint at seq {checkpoint.seq}")
            keep = [r for r in self._records if r.seq >= checkpoint.seq]
            removed = len(self._records) - len(keep)
            if keep and keep[0].event.kind == EventKind.CHECKPOINT:
                self._base = Position(checkpoint.seq - 1, keep[0].prev_hash)
            self._records = keep
            for seq in [s for s in self._checkpoints if s < checkpoint.seq]:
                del self._checkpoints[seq]
            return removed

    def conformance_at(self, at_ms: int, *, group: str | None = None) -> queries.Conformance:
        return queries.conformance_at(self.records(), at_ms, group=group)

    def instance_history(self, instance_id: str) -> queries.InstanceHistory:
        return queries.instance_history(self.records(), instance_id)

    def image_history(self) -> tuple[queries.ImageHistory, ...]:
        return queries.image_history(self.records())
