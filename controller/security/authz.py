"""Which role may call which RPC: one table, deny by default.

- agents: ``AgentService/Report`` and ``ReportDrift`` (and only for the instance
  their certificate names: :func:`require_instance`, called by the servicer,
  which alone has decoded the request);
- operators: the mutating ``FleetService`` RPCs listed in :data:`OPERATOR_MUTATIONS`
  plus every read;
- auditors: reads only;
- everyone authenticated: the standard health service and server reflection
  (the API's shape is published anyway: the protos are in the repository).

A *read* is any ``corral.v1`` RPC outside ``AgentService`` whose method name starts
with ``List``, ``Get``, ``Audit``, ``Verify`` or ``Export``, so read-only RPCs
added later (the audit queries) are open to auditors without touching this
table, while a new mutating RPC is refused to everyone until it is listed here
on purpose. Pure: method names in, a decision out.
"""

from __future__ import annotations

from controller.errors import PermissionDeniedError
from controller.security.identity import Identity, Role

PACKAGE = "corral.v1"
AGENT_SERVICE = f"{PACKAGE}.AgentService"
FLEET_SERVICE = f"{PACKAGE}.FleetService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)

AGENT_RPCS = frozenset({f"/{AGENT_SERVICE}/Report", f"/{AGENT_SERVICE}/ReportDrift"})
#: Operator RPCs that change the fleet; listed one by one on purpose.
OPERATOR_MUTATIONS = frozenset(
    f"/{FLEET_SERVICE}/{name}"
    for name in (
        "RegisterImage",
        "CreateGroup",
        "TaintInstance",
        "Rollout",
        "Rollback",
        "ResumeGroup",
    )
)
READ_PREFIXES = ("List", "Get", "Audit", "Verify", "Export")


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``); ("", "") if malformed."""
    parts = method.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return "", ""
    return parts[1], parts[2]


def is_read(method: str) -> bool:
    """True for a read-only corral RPC (see the module docstring for the rule)."""
    service, name = split_method(method)
    if not service.startswith(f"{PACKAGE}.") or service == AGENT_SERVICE:
        return False
    return name.startswith(READ_PREFIXES)


def is_health(method: str) -> bool:
    return split_method(method)[0] == HEALTH_SERVICE


def is_reflection(method: str) -> bool:
    return split_method(method)[0] in REFLECTION_SERVICES


def allowed(role: Role, method: str) -> bool:
    """May a caller with ``role`` call ``method`` (``/pkg.Service/Method``)?"""
    if is_health(method) or is_reflection(method):
        return True
    if role is Role.AGENT:
        return method in AGENT_RPCS
    if role is Role.OPERATOR:
        return method in OPERATOR_MUTATIONS or is_read(method)
    if role is Role.AUDITOR:
        return is_read(method)
    return False  # controllers call nothing on each other (yet)


def authorize(identity: Identity, method: str) -> None:
    """Raise PermissionDeniedError unless ``identity`` may call ``method``."""
    if not allowed(identity.role, method):
        _, name = split_method(method)
        raise PermissionDeniedError(
            f"{identity.actor} ({identity.role}) may not call {name or method}",
            reason="role",
        )


def require_instance(identity: Identity | None, instance_id: str) -> None:
    """Raise PermissionDeniedError unless an agent reports for its own instance.

    ``identity`` None means the server runs without client certificates
    (loopback or ``--insecure``): nothing to check against. A non-agent identity
    never reaches a report handler (:func:`authorize` refuses it first), but is
    refused here too.
    """
    if identity is None:
        return
    if identity.role is not Role.AGENT or identity.name != instance_id:
        raise PermissionDeniedError(
            f"{identity.actor} may not report for instance {instance_id[:128]!r}",
            reason="instance",
        )
