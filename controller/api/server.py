"""The gRPC server: AgentService, FleetService, AuditService, health and reflection.

``grpc.aio`` on one event loop. Messages above ``max_message_bytes`` are refused
by gRPC itself with RESOURCE_EXHAUSTED; keepalive settings let agents ping every
30 s without being told ``too_many_pings``, and connections are recycled every
30 minutes so load rebalances across replicas.

With ``security`` carrying TLS files the port requires client certificates and
the security interceptor checks identity, rate and role before any servicer
runs (its refusals are counted in ``corral_grpc_requests_total`` too); without
TLS the server listens on loopback only, unless ``insecure`` says otherwise
(:func:`controller.security.serving.bind`).

The corral services are registered with request deserializers that never raise
(:func:`controller.api.edge.add_servicer`), so an undecodable request is refused
INVALID_ARGUMENT and counted like any other refusal. Server reflection
(``grpc.reflection.v1alpha``) lets ``grpcurl`` and similar tools
discover the API (docs/api.md); under mutual TLS it needs a certificate like
any other call and is open to every role, like health.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from controller.api.agent_service import AgentServicer
from controller.api.audit_service import AuditServicer
from controller.api.counting import RefusalCounter
from controller.api.edge import add_servicer
from controller.api.fleet_service import FleetServicer
from controller.engine.reports import ControllerService
from controller.security.serving import ServerSecurity, bind, server_interceptors
from protos.corral.v1 import agent_pb2, audit_pb2, fleet_pb2

SERVICES = ("corral.v1.AgentService", "corral.v1.FleetService", "corral.v1.AuditService")


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", 60_000),
    ]


class ControllerServer:
    """The wired server; :meth:`start` binds, :meth:`stop` drains gracefully."""

    def __init__(
        self,
        service: ControllerService,
        *,
        listen: str,
        max_message_bytes: int,
        max_manifest_bytes: int,
        security: ServerSecurity | None = None,
        providers: frozenset[str] | None = None,
    ) -> None:
        """``providers``: configured provider names CreateGroup accepts (None: any)."""
        security = security or ServerSecurity()
        refused = RefusalCounter(service.metrics.grpc_requests)
        self.server = grpc.aio.server(
            interceptors=server_interceptors(security, on_refused=refused),
            options=server_options(max_message_bytes),
        )
        add_servicer(
            self.server,
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
            AgentServicer(service),
        )
        add_servicer(
            self.server,
            fleet_pb2.DESCRIPTOR.services_by_name["FleetService"],
            FleetServicer(
                service,
                max_manifest_bytes=max_manifest_bytes,
                providers=providers,
                evidence_bytes=max_message_bytes // 4,
            ),
        )
        add_servicer(
            self.server,
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
            AuditServicer(service),
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                *SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = bind(self.server, listen, security)

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self, services: set[str]) -> None:
        """Health: NOT_SERVING for ``services`` ("" is the server as a whole), SERVING for
        the rest (the controller's watchdog calls this when a background loop dies)."""
        for name in ("", *SERVICES):
            status = (
                health_pb2.HealthCheckResponse.NOT_SERVING
                if name in services
                else health_pb2.HealthCheckResponse.SERVING
            )
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, finish in-flight calls for up to ``grace`` seconds, stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()
