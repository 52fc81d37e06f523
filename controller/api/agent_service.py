"""``corral.v1.AgentService``: where every agent's reports arrive.

Thin: validate and convert (:mod:`controller.api.convert`), hand the report to
the service, map a refusal to its status code. With mutual TLS the security
interceptor has already checked that an agent reports for the instance its
certificate names; the servicer checks it again (``require_instance``) so no
wiring mistake can let one instance speak for another. Runs on the event loop; the
service's work per report is short (see :mod:`controller.store.sqlite`).

``Report`` is the hottest path in the controller, so it counts its own calls
(cached label children, no interceptor) and answers with prebuilt responses.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from controller.api.convert import (
    evidence_from_proto,
    report_from_proto,
    state_to_proto,
    status_of,
)
from controller.api.counting import MethodCounter, counted, method_counters
from controller.domain.model import Evidence, InstanceState, Report
from controller.errors import ControllerError
from controller.security.authz import require_instance
from controller.security.caller import current_identity
from controller.service import ControllerService
from protos.corral.v1 import agent_pb2, agent_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]
SERVICE = "corral.v1.AgentService"
REPORT = f"/{SERVICE}/Report"
REPORT_DRIFT = f"/{SERVICE}/ReportDrift"
log = logging.getLogger("corral.controller")

# Every possible ReportResponse, built once (responses are never mutated).
_RESPONSES = {
    (state, wanted): agent_pb2.ReportResponse(state=state_to_proto(state), evidence_wanted=wanted)
    for state in InstanceState
    for wanted in (False, True)
}


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Takes reports and drift reports from agents."""

    def __init__(self, service: ControllerService) -> None:
        self._service = service
        self._calls = method_counters(
            service.metrics.grpc_requests, SERVICE, ("Report", "ReportDrift")
        )
        self._report_calls: MethodCounter = self._calls[REPORT]

    async def Report(
        self, request: agent_pb2.ReportRequest, context: Context
    ) -> agent_pb2.ReportResponse:
        calls = self._report_calls
        try:
            report = report_from_proto(request.header, present=request.HasField("header"))
            require_instance(current_identity(), report.instance_id)
        except ControllerError as exc:
            self._service.count_rejected(exc)
            await self._abort(calls, exc, context)
        try:
            decision = self._service.report(report)
        except ControllerError as exc:
            await self._abort(calls, exc, context)
        except Exception:
            log.exception("report handling failed", extra={"instance_id": report.instance_id})
            calls.finished(grpc.StatusCode.UNKNOWN)
            raise
        calls.ok.inc()
        return _RESPONSES[decision.instance.state, decision.evidence_wanted]

    @counted(REPORT_DRIFT)
    async def ReportDrift(
        self, request: agent_pb2.ReportDriftRequest, context: Context
    ) -> agent_pb2.ReportDriftResponse:
        evidence: Evidence
        report: Report
        try:
            report = report_from_proto(request.header, present=request.HasField("header"))
            require_instance(current_identity(), report.instance_id)
            evidence = evidence_from_proto(request)
        except ControllerError as exc:
            self._service.count_rejected(exc)
            await context.abort(status_of(exc), str(exc))
        try:
            decision = self._service.report(report, evidence)
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        return agent_pb2.ReportDriftResponse(state=state_to_proto(decision.instance.state))

    @staticmethod
    async def _abort(calls: MethodCounter, error: ControllerError, context: Context) -> NoReturn:
        code = status_of(error)
        calls.finished(code)
        await context.abort(code, str(error))
