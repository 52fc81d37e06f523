"""``corral.v1.AgentService``: where every agent's reports arrive.

Thin: validate and convert (:mod:`controller.api.convert`), hand the report to
the service, map a refusal to its status code. With mutual TLS the security
interceptor has already checked that an agent reports for the instance its
certificate names; the servicer checks it again (``require_instance``) so no
wiring mistake can let one instance speak for another. Runs on the event loop; the
service's work per report is short (see :mod:`controller.store.sqlite`).

``Report`` is the hottest path in the controller, so it counts its own calls
(cached label children, no interceptor) and answers with prebuilt responses;
it ends every call by the same rule as every other RPC (:mod:`controller.api.edge`).
"""

from __future__ import annotations

import logging

import grpc

from agent.manifest.report import Evidence, Report
from controller.api.convert import (
    evidence_from_proto,
    report_from_proto,
    state_to_proto,
)
from controller.api.counting import MethodCounter, method_counters
from controller.api.edge import Undecodable, internal, refuse, served, undecodable
from controller.domain.model import InstanceState
from controller.engine.reports import ControllerService
from controller.errors import ControllerError
from controller.security.authz import require_instance
from controller.security.caller import current_identity
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
        if isinstance(request, Undecodable):  # the lenient deserializer's stand-in
            await undecodable(calls, request, context)
        try:
            report = report_from_proto(request.header, present=request.HasField("header"))
            require_instance(current_identity(), report.instance_id)
        except ControllerError as exc:
            self._service.count_rejected(exc)
            await refuse(calls, exc, context)
        try:
            decision = self._service.report(report)
        except ControllerError as exc:
            await refuse(calls, exc, context)
        except Exception:
            await internal(calls, context)
        calls.ok.inc()
        return _RESPONSES[decision.instance.state, decision.evidence_wanted]

    @served(REPORT_DRIFT)
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
            raise
        decision = self._service.report(report, evidence)
        return agent_pb2.ReportDriftResponse(state=state_to_proto(decision.instance.state))
