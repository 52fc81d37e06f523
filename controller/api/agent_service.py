"""``corral.v1.AgentService``: where every agent's reports arrive.

Thin: validate and convert (:mod:`controller.api.convert`), hand the report to
the service, map a refusal to its status code. Runs on the event loop; the
service's work per report is short (see :mod:`controller.store.sqlite`).
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from controller.api.convert import (
    evidence_from_proto,
    report_from_proto,
    state_to_proto,
    status_of,
)
from controller.domain.model import Evidence, Report
from controller.errors import ControllerError
from controller.service import ControllerService
from protos.corral.v1 import agent_pb2, agent_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Takes reports and drift reports from agents."""

    def __init__(self, service: ControllerService) -> None:
        self._service = service

    async def Report(
        self, request: agent_pb2.ReportRequest, context: Context
    ) -> agent_pb2.ReportResponse:
        try:
            report = report_from_proto(request.header, present=request.HasField("header"))
        except ControllerError as exc:
            await self._refuse_malformed(exc, context)
        try:
            decision = self._service.report(report)
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        return agent_pb2.ReportResponse(
            state=state_to_proto(decision.instance.state),
            evidence_wanted=decision.evidence_wanted,
        )

    async def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: Context
    ) -> agent_pb2.ReportDriftResponse:
        evidence: Evidence
        report: Report
        try:
            report = report_from_proto(request.header, present=request.HasField("header"))
            evidence = evidence_from_proto(request)
        except ControllerError as exc:
            await self._refuse_malformed(exc, context)
        try:
            decision = self._service.report(report, evidence)
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        return agent_pb2.ReportDriftResponse(state=state_to_proto(decision.instance.state))

    async def _refuse_malformed(self, error: ControllerError, context: Context) -> NoReturn:
        self._service.count_rejected(error)
        await context.abort(status_of(error), str(error))
