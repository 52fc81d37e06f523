"""Audit answers to and from ``corral.v1.AuditService`` messages, both directions.

The controller turns query results into messages (``*_to_proto``); ``corral
audit --controller`` turns them back into the audit package's own values
(``*_from_proto``), so the CLI prints a remote answer with the same code as a
local one. A record travels with every hashed field intact (``data`` as its
canonical JSON text), so an export written from these messages re-hashes to
the same chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.audit.chain import Checkpoint, VerifyResult
from controller.audit.queries import (
    Conformance,
    DesiredSpan,
    ImageHistory,
    ImageRun,
    InstanceAt,
    InstanceHistory,
)
from controller.audit.record import Record, canonical_json
from controller.audit.row import Row, record_from_row, row_of
from protos.corral.v1 import audit_pb2

# Records per ExportAudit message, and the bytes at which one is sent sooner (a
# checkpoint's fleet snapshot can be MiBs): well under the default 4 MiB message limit.
EXPORT_BATCH = 500
EXPORT_BATCH_BYTES = 1024 * 1024


def record_to_proto(record: Record) -> audit_pb2.AuditRecord:
    return row_to_proto(row_of(record))


def row_to_proto(row: Row) -> audit_pb2.AuditRecord:
    """A record's row as a message; stored ``data`` text travels as it is."""
    seq, at_ms, kind, actor, reason, instance, related, group, image, data, prev, digest = row
    return audit_pb2.AuditRecord(
        seq=seq,
        prev_hash=prev,
        hash=digest,
        at_ms=at_ms,
        kind=kind,
        actor=actor,
        reason=reason,
        data_json=data if isinstance(data, str) else canonical_json(dict(data)).decode("utf-8"),
        instance_id=instance,  # None leaves an optional field absent
        related_instance_id=related,
        group=group,
        image=image,
    )


def row_from_proto(message: audit_pb2.AuditRecord) -> Row:
    """The record as the controller sent it, as a row (its hash is checked later, by ``verify``)."""
    has = message.HasField  # a million times for a large export: no helper call per field
    return (
        message.seq,
        message.at_ms,
        message.kind,
        message.actor,
        message.reason,
        message.instance_id if has("instance_id") else None,
        message.related_instance_id if has("related_instance_id") else None,
        message.group if has("group") else None,
        message.image if has("image") else None,
        message.data_json or "{}",
        message.prev_hash,
        message.hash,
    )


def record_from_proto(message: audit_pb2.AuditRecord) -> Record:
    """The record as the controller sent it; raises AuditError when it cannot be read."""
    return record_from_row(row_from_proto(message))


def checkpoint_to_proto(checkpoint: Checkpoint) -> audit_pb2.AuditCheckpoint:
    return audit_pb2.AuditCheckpoint(
        seq=checkpoint.seq,
        hash=checkpoint.hash,
        at_ms=checkpoint.at_ms,
        key_id=checkpoint.key_id or "",
        signature=checkpoint.signature or "",
    )


def checkpoint_from_proto(message: audit_pb2.AuditCheckpoint) -> Checkpoint:
    return Checkpoint(
        message.seq,
        message.hash,
        message.at_ms,
        message.key_id or None,
        message.signature or None,
    )


def conformance_to_proto(result: Conformance) -> audit_pb2.AuditConformanceResponse:
    return audit_pb2.AuditConformanceResponse(
        at_ms=result.at_ms,
        group=result.group or "",
        instances=[
            audit_pb2.AuditInstance(
                instance_id=i.instance_id,
                group=i.group,
                image=i.image,
                state=i.state,
                since_ms=i.since_ms,
                seq=i.seq,
            )
            for i in result.instances
        ],
    )


def conformance_from_proto(message: audit_pb2.AuditConformanceResponse) -> Conformance:
    return Conformance(
        at_ms=message.at_ms,
        group=message.group or None,
        instances=tuple(
            InstanceAt(i.instance_id, i.group, i.image, i.state, i.since_ms, i.seq)
            for i in message.instances
        ),
    )


def history_to_proto(history: InstanceHistory) -> audit_pb2.AuditHistoryResponse:
    message = audit_pb2.AuditHistoryResponse(
        instance_id=history.instance_id,
        records=[record_to_proto(r) for r in history.records],
    )
    if history.launched_ms is not None:
        message.launched_ms = history.launched_ms
    if history.retired_ms is not None:
        message.retired_ms = history.retired_ms
    return message


def history_from_proto(message: audit_pb2.AuditHistoryResponse) -> InstanceHistory:
    return InstanceHistory(
        instance_id=message.instance_id,
        launched_ms=_opt(message, "launched_ms"),
        retired_ms=_opt(message, "retired_ms"),
        records=tuple(record_from_proto(r) for r in message.records),
    )


def images_to_proto(images: Iterable[ImageHistory]) -> audit_pb2.AuditImagesResponse:
    out = audit_pb2.AuditImagesResponse()
    for image in images:
        item = out.images.add(image=image.image)
        _set(item, digest=image.digest, registered_ms=image.registered_ms)
        _set(item, registered_by=image.registered_by)
        for run in image.runs:
            row = item.runs.add(instance_id=run.instance_id, group=run.group, from_ms=run.from_ms)
            _set(row, until_ms=run.until_ms)
        for span in image.desired:
            desired = item.desired.add(
                group=span.group, from_ms=span.from_ms, actor=span.actor, how=span.how
            )
            _set(desired, until_ms=span.until_ms)
    return out


def images_from_proto(message: audit_pb2.AuditImagesResponse) -> tuple[ImageHistory, ...]:
    return tuple(
        ImageHistory(
            image=i.image,
            digest=_opt(i, "digest"),
            registered_ms=_opt(i, "registered_ms"),
            registered_by=_opt(i, "registered_by"),
            runs=tuple(
                ImageRun(r.instance_id, r.group, r.from_ms, _opt(r, "until_ms")) for r in i.runs
            ),
            desired=tuple(
                DesiredSpan(d.group, d.from_ms, _opt(d, "until_ms"), d.actor, d.how)
                for d in i.desired
            ),
        )
        for i in message.images
    )


def verify_to_proto(
    result: VerifyResult, checkpoints: Iterable[Checkpoint]
) -> audit_pb2.VerifyAuditResponse:
    message = audit_pb2.VerifyAuditResponse(
        ok=result.ok,
        checked=result.checked,
        first_seq=result.first_seq,
        last_seq=result.last_seq,
        last_hash=result.last_hash,
        problem=result.problem,
        checkpoints=[checkpoint_to_proto(c) for c in checkpoints],
    )
    _set(message, first_bad_seq=result.first_bad_seq)
    return message


def verify_from_proto(message: audit_pb2.VerifyAuditResponse) -> VerifyResult:
    return VerifyResult(
        message.ok,
        message.checked,
        message.first_seq,
        message.last_seq,
        message.last_hash,
        _opt(message, "first_bad_seq"),
        message.problem,
    )


def _opt(message: Any, name: str) -> Any:
    """The optional field's value, or None when it is absent."""
    return getattr(message, name) if message.HasField(name) else None


def _set(message: Any, **values: object) -> None:
    """Set each optional field whose value is not None."""
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)
