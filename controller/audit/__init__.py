"""The auditors' tamper-evident history: an append-only, hash-chained log of the fleet.

What the controller calls: event constructors in ``events`` (one per thing that
happens), ``AuditLog.append`` or ``sqlite.append_in`` inside the store's own
transaction, ``checkpoint``/``prune_before`` for retention, ``verify`` for
auditors, and the time-travel queries (``conformance_at``, ``instance_history``,
``image_history``). docs/audit.md describes the encoding an auditor re-hashes.
"""

from __future__ import annotations

from controller.audit.chain import Checkpoint, Position, VerifyResult
from controller.audit.errors import AuditError, CheckpointError, InvalidEventError
from controller.audit.memory import MemoryAuditLog
from controller.audit.ports import AuditLog
from controller.audit.queries import (
    Conformance,
    DesiredSpan,
    ImageHistory,
    ImageRun,
    InstanceAt,
    InstanceHistory,
)
from controller.audit.record import Event, EventKind, Record
from controller.audit.sqlite import SqliteAuditLog, append_in, install_schema

__all__ = [
    "AuditError",
    "AuditLog",
    "Checkpoint",
    "CheckpointError",
    "Conformance",
    "DesiredSpan",
    "Event",
    "EventKind",
    "ImageHistory",
    "ImageRun",
    "InstanceAt",
    "InstanceHistory",
    "InvalidEventError",
    "MemoryAuditLog",
    "Position",
    "Record",
    "SqliteAuditLog",
    "VerifyResult",
    "append_in",
    "install_schema",
]
