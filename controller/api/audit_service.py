"""``corral.v1.AuditService``: the auditors' read-only questions, over gRPC.

Every answer comes from the store's audit log (:meth:`controller.ports.Store.audit_log`),
never from current state. Queries run in a worker thread: a fleet-wide
conformance snapshot or a full ``verify`` of a long chain takes seconds and must
not stall agents' reports on the event loop. The SQLite store reads through its
own read-only connection, so these never wait on the writer either.

All methods are reads by name (Audit*, Export*, Verify*), which the security
role table opens to auditors and operators. Ids, names and times are checked at
the edge like every other RPC; calls end and are counted by the one rule of
:mod:`controller.api.edge`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from controller.api import audit_convert as convert
from controller.api.convert import check_int, instance_id_of, name_of
from controller.api.counting import method_counters
from controller.api.edge import served, served_stream
from controller.api.limits import MAX_TIME_MS
from controller.audit.ports import AuditLog
from controller.engine.reports import ControllerService
from controller.security.authz import PACKAGE
from protos.corral.v1 import audit_pb2, audit_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]
SERVICE = f"{PACKAGE}.AuditService"
METHODS = ("AuditConformance", "AuditHistory", "AuditImages", "ExportAudit", "VerifyAudit")
T = TypeVar("T")


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Answers from the service's store's audit log; its clock says what "now" is."""

    def __init__(self, service: ControllerService) -> None:
        self._store = service.store
        self._clock = service.clock
        self._calls = method_counters(service.metrics.grpc_requests, SERVICE, METHODS)

    def _log(self) -> AuditLog:
        return self._store.audit_log()

    async def _run(self, query: Callable[[AuditLog], T]) -> T:
        return await asyncio.to_thread(lambda: query(self._log()))

    @served(_method("AuditConformance"))
    async def AuditConformance(
        self, request: audit_pb2.AuditConformanceRequest, context: Context
    ) -> audit_pb2.AuditConformanceResponse:
        at_ms = check_int("at_ms", request.at_ms, high=MAX_TIME_MS) or int(self._clock() * 1000)
        group = name_of("group", request.group) if request.group else None
        result = await self._run(lambda log: log.conformance_at(at_ms, group=group))
        return convert.conformance_to_proto(result)

    @served(_method("AuditHistory"))
    async def AuditHistory(
        self, request: audit_pb2.AuditHistoryRequest, context: Context
    ) -> audit_pb2.AuditHistoryResponse:
        instance_id = instance_id_of("instance_id", request.instance_id)
        history = await self._run(lambda log: log.instance_history(instance_id))
        return convert.history_to_proto(history)

    @served(_method("AuditImages"))
    async def AuditImages(
        self, request: audit_pb2.AuditImagesRequest, context: Context
    ) -> audit_pb2.AuditImagesResponse:
        images = await self._run(lambda log: log.image_history())
        return convert.images_to_proto(images)

    @served(_method("VerifyAudit"))
    async def VerifyAudit(
        self, request: audit_pb2.VerifyAuditRequest, context: Context
    ) -> audit_pb2.VerifyAuditResponse:
        result, checkpoints = await self._run(lambda log: (log.verify(), log.checkpoints()))
        return convert.verify_to_proto(result, checkpoints)

    @served_stream(_method("ExportAudit"))
    async def ExportAudit(
        self, request: audit_pb2.ExportAuditRequest, context: Context
    ) -> AsyncIterator[audit_pb2.ExportAuditResponse]:
        """Stream the records in batches; the last message carries the checkpoints."""
        since = until = None
        if request.HasField("since_ms"):
            since = check_int("since_ms", request.since_ms, high=MAX_TIME_MS)
        if request.HasField("until_ms"):
            until = check_int("until_ms", request.until_ms, high=MAX_TIME_MS)
        first = last = None
        async for batch in _batches(self._log(), since_ms=since, until_ms=until):
            first = first if first is not None else batch[0].seq
            last = batch[-1].seq
            yield audit_pb2.ExportAuditResponse(records=batch)
        checkpoints = await self._run(lambda log: log.checkpoints())
        covered = [
            c
            for c in checkpoints
            if first is not None and last is not None and first <= c.seq <= last
        ]
        yield audit_pb2.ExportAuditResponse(
            checkpoints=[convert.checkpoint_to_proto(c) for c in covered]
        )


async def _batches(
    log: AuditLog, *, since_ms: int | None, until_ms: int | None
) -> AsyncIterator[list[audit_pb2.AuditRecord]]:
    """The records as messages, in batches made by one worker thread (it holds the read lock).

    A batch ends at ``EXPORT_BATCH`` records or ``EXPORT_BATCH_BYTES``, so it
    stays under the message limit unless one record alone exceeds it. The
    queue is bounded, so a slow client holds at most a few batches in memory;
    when the client goes away the reader is told to stop and its lock is released.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[audit_pb2.AuditRecord] | BaseException | None] = asyncio.Queue(
        maxsize=4
    )
    stop = threading.Event()

    def put(item: list[audit_pb2.AuditRecord] | BaseException | None) -> None:
        while not stop.is_set():
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            try:
                future.result(timeout=1.0)
                return
            except TimeoutError:
                future.cancel()

    def read() -> None:
        try:
            batch: list[audit_pb2.AuditRecord] = []
            size = 0
            for row in log.rows(since_ms=since_ms, until_ms=until_ms):
                message = convert.row_to_proto(row)
                batch.append(message)
                size += message.ByteSize()
                if len(batch) >= convert.EXPORT_BATCH or size >= convert.EXPORT_BATCH_BYTES:
                    put(batch)
                    batch, size = [], 0
                if stop.is_set():
                    return
            if batch:
                put(batch)
            put(None)
        except Exception as error:  # handed to the caller, which raises it
            put(error)

    reader = loop.run_in_executor(None, read)
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await reader
