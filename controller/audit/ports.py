"""The audit log port: what the controller's orchestration and the auditors' CLI rely on.

Adapters: ``memory.MemoryAuditLog`` (tests, the embedded default without a data
dir), ``sqlite.SqliteAuditLog`` (standalone file, or inside the controller
store's own connection via ``sqlite.append_in``) and ``postgres.PostgresAuditLog``
(shared by controller replicas; ``postgres.append_in`` inside the store's
transaction). One contract suite (tests/contract/test_audit_log_contract.py)
holds every adapter to this port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from controller.audit.chain import Checkpoint, Position, VerifyResult
from controller.audit.queries import Conformance, ImageHistory, InstanceHistory
from controller.audit.record import Event, Record
from controller.audit.row import Row


class AuditLog(Protocol):
    """An append-only, hash-chained history of everything that happened to the fleet."""

    def append(self, event: Event) -> Record:
        """Record ``event`` as the next record and return it.

        The record's time is ``max(event.at_ms, head time)`` so times never
        decrease along the chain. Safe under concurrent callers: the chain never
        forks. Raises InvalidEventError (bad event) or AuditError (storage).
        """
        ...

    def head(self) -> Position:
        """The latest record's (seq, hash); (0, 64 zeros) for an empty log."""
        ...

    def records(
        self, *, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[Record]:
        """Retained records with ``since_ms <= at_ms <= until_ms`` (bounds optional), seq order."""
        ...

    def rows(self, *, since_ms: int | None = None, until_ms: int | None = None) -> Iterator[Row]:
        """The same records as ``records()``, as rows: what readers of a whole log take."""
        ...

    def verify(self, *, key: bytes | None = None) -> VerifyResult:
        """Re-hash every retained record against the base, the head and the checkpoints.

        With ``key``, every checkpoint must carry a valid signature by that key.
        """
        ...

    def checkpoint(self, *, at_ms: int, actor: str, key: bytes | None = None) -> Checkpoint:
        """Append a checkpoint record (with a fleet snapshot) and return its anchor.

        With ``key`` the checkpoint is HMAC-signed; the key is never stored or logged.
        """
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint still retained, oldest first."""
        ...

    def prune_before(self, checkpoint: Checkpoint) -> int:
        """Delete every record before ``checkpoint``; return how many were deleted.

        Raises CheckpointError if ``checkpoint`` is not a retained checkpoint of this log.
        """
        ...

    def conformance_at(self, at_ms: int, *, group: str | None = None) -> Conformance:
        """Every instance that existed at ``at_ms`` with its image and state then."""
        ...

    def instance_history(self, instance_id: str) -> InstanceHistory:
        """Every retained record naming ``instance_id``."""
        ...

    def image_history(self) -> tuple[ImageHistory, ...]:
        """Every image: registration, runs and desired spans."""
        ...
