"""Identities from certificate URIs and the role table: who may call what."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import PermissionDeniedError
from controller.security.authz import allowed, authorize, is_read, require_instance
from controller.security.identity import (
    Identity,
    Role,
    identity_from_auth_context,
    identity_from_uris,
    parse_uri,
)

FLEET = "/corral.v1.FleetService/"
AGENT = "/corral.v1.AgentService/"
HEALTH = "/grpc.health.v1.Health/Check"
MUTATIONS = ["RegisterImage", "CreateGroup", "TaintInstance", "Rollout", "Rollback", "ResumeGroup"]
READS = ["ListImages", "ListGroups", "ListInstances", "GetInstance"]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://corral/agent/i-1", Identity(Role.AGENT, "i-1")),
        ("spiffe://corral/operator/alice", Identity(Role.OPERATOR, "alice")),
        ("spiffe://corral/auditor/bob", Identity(Role.AUDITOR, "bob")),
        ("spiffe://corral/controller/c1", Identity(Role.CONTROLLER, "c1")),
        ("spiffe://corral/agent/ip-10-0-0-1.ec2:x", Identity(Role.AGENT, "ip-10-0-0-1.ec2:x")),
    ],
)
def test_corral_uris_name_an_identity(uri: str, expected: Identity) -> None:
    assert parse_uri(uri) == expected
    assert expected.uri() == uri


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://other/agent/i-1",  # another trust domain
        "https://corral/agent/i-1",
        "spiffe://corral/admin/root",  # no such role
        "spiffe://corral/agent/",
        "spiffe://corral/agent/i-1/extra",
        "spiffe://corral/agent/i%2D1",
        "spiffe://corral/agent/i-1?x=1",
        "spiffe://corral/agent/i-1#f",
        "spiffe://corral//agent/i-1",
        "spiffe://corral/agent/-leading-dash",
        "spiffe://corral/agent/" + "x" * 200,
    ],
)
def test_other_uris_name_nobody(uri: str) -> None:
    assert parse_uri(uri) is None


def test_a_deployment_trust_domain_replaces_corral() -> None:
    uri = "spiffe://prod.example.com/operator/alice"
    assert parse_uri(uri) is None
    assert parse_uri(uri, trust_domain="prod.example.com") == Identity(Role.OPERATOR, "alice")


def test_one_identity_among_unrelated_uris() -> None:
    uris = ["https://example.com/x", "spiffe://corral/agent/i-1", "spiffe://other/agent/i-9"]
    assert identity_from_uris(uris) == Identity(Role.AGENT, "i-1")


def test_two_corral_identities_are_no_identity() -> None:
    assert identity_from_uris(["spiffe://corral/agent/i-1", "spiffe://corral/agent/i-2"]) is None
    assert identity_from_uris(["spiffe://corral/agent/i-1", "spiffe://corral/bogus/x"]) is None


def test_auth_context_without_verified_uris_is_anonymous() -> None:
    assert identity_from_auth_context({}) is None
    assert identity_from_auth_context({"transport_security_type": [b"insecure"]}) is None
    assert identity_from_auth_context({"peer_uri": [b"\xff\xfe"]}) is None
    context = {"peer_uri": [b"spiffe://corral/auditor/bob"], "x509_common_name": [b"alice"]}
    assert identity_from_auth_context(context) == Identity(Role.AUDITOR, "bob")


def test_actor_names_role_and_name() -> None:
    assert Identity(Role.AGENT, "i-1").actor == "agent:i-1"
    with pytest.raises(ValueError, match="not a valid"):
        Identity(Role.OPERATOR, "a b")


@pytest.mark.parametrize("name", ["Report", "ReportDrift"])
def test_agents_report_and_nothing_else(name: str) -> None:
    assert allowed(Role.AGENT, AGENT + name)
    for other in (Role.OPERATOR, Role.AUDITOR, Role.CONTROLLER):
        assert not allowed(other, AGENT + name)
    for method in MUTATIONS + READS:
        assert not allowed(Role.AGENT, FLEET + method)


@pytest.mark.parametrize("name", MUTATIONS)
def test_only_operators_mutate(name: str) -> None:
    assert allowed(Role.OPERATOR, FLEET + name)
    for role in (Role.AUDITOR, Role.AGENT, Role.CONTROLLER):
        assert not allowed(role, FLEET + name)
        with pytest.raises(PermissionDeniedError, match=name):
            authorize(Identity(role, "x"), FLEET + name)


@pytest.mark.parametrize(
    "method",
    [FLEET + name for name in READS]
    + ["/corral.v1.AuditService/ListEvents", "/corral.v1.AuditService/VerifyChain"]
    + ["/corral.v1.AuditService/ExportRecords", "/corral.v1.AuditService/AuditAt"],
)
def test_operators_and_auditors_read(method: str) -> None:
    assert is_read(method)
    assert allowed(Role.OPERATOR, method)
    assert allowed(Role.AUDITOR, method)
    assert not allowed(Role.AGENT, method)


@pytest.mark.parametrize(
    "method",
    [
        FLEET + "DeleteGroup",  # a new mutation is denied until listed
        "/corral.v1.AgentService/ListThings",  # agent service is never a read
        "/other.v1.Service/ListThings",
        "/corral.v1.FleetService/ListImages/extra",
        "corral.v1.FleetService/ListImages",
        "",
    ],
)
def test_unknown_methods_are_denied_to_everyone(method: str) -> None:
    for role in Role:
        assert not allowed(role, method)


@given(st.sampled_from(list(Role)), st.text(max_size=60))
def test_health_is_open_and_nothing_else_is_unless_listed(role: Role, name: str) -> None:
    assert allowed(role, HEALTH)
    method = FLEET + name
    if allowed(role, method):
        assert role in (Role.OPERATOR, Role.AUDITOR)
        assert name in MUTATIONS or is_read(method)
        if role is Role.AUDITOR:
            assert name not in MUTATIONS


def test_an_agent_reports_only_for_its_own_instance() -> None:
    agent = Identity(Role.AGENT, "i-1")
    require_instance(agent, "i-1")
    with pytest.raises(PermissionDeniedError, match="agent:i-1 may not report for instance 'i-2'"):
        require_instance(agent, "i-2")
    with pytest.raises(PermissionDeniedError):
        require_instance(Identity(Role.OPERATOR, "i-1"), "i-1")
    require_instance(None, "anything")  # a server without mTLS has nobody to check


@pytest.mark.parametrize("name", ["unverified:alice", "Unverified:x", "operator:bob", "agent:i-1"])
def test_a_certificate_cannot_claim_a_reserved_prefix(name: str) -> None:
    assert parse_uri(f"spiffe://corral/operator/{name}") is None
    with pytest.raises(ValueError, match="reserved prefix"):
        Identity(Role.OPERATOR, name)
