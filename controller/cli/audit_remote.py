"""The audit log of a running controller, read over gRPC (``corral audit --controller``).

:class:`RemoteAuditLog` answers the auditors' questions of the ``AuditLog`` port
by calling ``corral.v1.AuditService``, so ``corral audit`` prints a remote
answer with the same code as a local one. It only reads: appending,
checkpointing and pruning need the store file (``--data-dir``).

``verify --key-file`` keeps the key here: the controller re-hashes the chain
and sends its checkpoints; their signatures are checked in this process, so the
signing key never travels to the controller.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from controller.api import audit_convert as convert
from controller.audit.chain import Checkpoint, Position, VerifyResult, check_checkpoint
from controller.audit.errors import AuditError
from controller.audit.queries import Conformance, ImageHistory, InstanceHistory
from controller.audit.record import Event, Record
from controller.audit.row import Row, record_from_row
from controller.cli.client import FleetClient
from controller.security.tls import TlsFiles
from protos.corral.v1 import audit_pb2, audit_pb2_grpc


class AuditClient(FleetClient):
    """A channel to the controller with an ``AuditService`` stub beside the fleet one."""

    def __init__(self, address: str, *, timeout: float, tls: TlsFiles | None = None) -> None:
        super().__init__(address, timeout=timeout, tls=tls)
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channel)

    def stream_rows(self, request: audit_pb2.ExportAuditRequest) -> Iterator[Row]:
        """An ExportAudit stream's records as rows; its checkpoints go to :attr:`last_checkpoints`.

        Raises ClientError (as :meth:`call` does) when the stream fails.
        """
        self.last_checkpoints: list[Checkpoint] = []
        try:
            for message in self.audit.ExportAudit(
                request, timeout=self.timeout, metadata=self._metadata
            ):
                yield from map(convert.row_from_proto, message.records)
                self.last_checkpoints.extend(
                    convert.checkpoint_from_proto(c) for c in message.checkpoints
                )
        except grpc.RpcError as exc:
            raise self._error(exc) from None


class RemoteAuditLog:
    """The read side of :class:`controller.audit.ports.AuditLog` over ``AuditService``."""

    def __init__(self, client: AuditClient) -> None:
        self._client = client
        self._checkpoints: list[Checkpoint] | None = None

    def close(self) -> None:
        self._client.close()

    def conformance_at(self, at_ms: int, *, group: str | None = None) -> Conformance:
        request = audit_pb2.AuditConformanceRequest(at_ms=at_ms, group=group or "")
        return convert.conformance_from_proto(
            self._client.call(self._client.audit.AuditConformance, request)
        )

    def instance_history(self, instance_id: str) -> InstanceHistory:
        request = audit_pb2.AuditHistoryRequest(instance_id=instance_id)
        return convert.history_from_proto(
            self._client.call(self._client.audit.AuditHistory, request)
        )

    def image_history(self) -> tuple[ImageHistory, ...]:
        response = self._client.call(self._client.audit.AuditImages, audit_pb2.AuditImagesRequest())
        return convert.images_from_proto(response)

    def records(
        self, *, since_ms: int | None = None, until_ms: int | None = None
    ) -> Iterator[Record]:
        return map(record_from_row, self.rows(since_ms=since_ms, until_ms=until_ms))

    def rows(self, *, since_ms: int | None = None, until_ms: int | None = None) -> Iterator[Row]:
        request = audit_pb2.ExportAuditRequest()
        if since_ms is not None:
            request.since_ms = since_ms
        if until_ms is not None:
            request.until_ms = until_ms
        yield from self._client.stream_rows(request)
        self._checkpoints = list(self._client.last_checkpoints)

    def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints the controller sent with the last :meth:`rows` or :meth:`verify`."""
        if self._checkpoints is None:
            raise AuditError("checkpoints come with records(), rows() or verify() over the API")
        return list(self._checkpoints)

    def verify(self, *, key: bytes | None = None) -> VerifyResult:
        response = self._client.call(self._client.audit.VerifyAudit, audit_pb2.VerifyAuditRequest())
        result = convert.verify_from_proto(response)
        self._checkpoints = [convert.checkpoint_from_proto(c) for c in response.checkpoints]
        if not result.ok or key is None:
            return result
        for checkpoint in self._checkpoints:
            problem = check_checkpoint(checkpoint, key)
            if problem:
                return result.failed_at(checkpoint.seq, problem)
        return result

    def head(self) -> Position:
        result = self.verify()
        return Position(result.last_seq, result.last_hash)

    def append(self, event: Event) -> Record:
        raise AuditError("the controller's API is read-only for the audit log")

    def checkpoint(self, *, at_ms: int, actor: str, key: bytes | None = None) -> Checkpoint:
        raise AuditError("take a checkpoint with --data-dir DIR (it writes the store file)")

    def prune_before(self, checkpoint: Checkpoint) -> int:
        raise AuditError("prune with --data-dir DIR (it writes the store file)")
