"""Fuzz the whole gRPC contract: generated requests and raw bytes against a real controller.

For every RPC of AgentService, FleetService and AuditService, requests built
from the proto descriptors (:mod:`tests.fuzz.messages`) and raw bytes sent with
identity serializers go to a real controller on SQLite. Whatever arrives:

- the status is one the API documents (docs/api.md), never UNKNOWN, INTERNAL
  or UNAVAILABLE;
- a refused call changes nothing stored (instances, groups, images, audit head);
- at the end health still says SERVING, and after a restart on the same data
  directory the store opens, lists and its audit chain verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from protos.corral.v1 import agent_pb2, audit_pb2, fleet_pb2
from tests.fixtures.baked import Baked
from tests.fixtures.running import RunningController
from tests.fuzz.messages import Builder
from tests.fuzz.profile import FUZZ

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
METHODS: list[MethodDescriptor] = [
    method
    for module, name in (
        (agent_pb2, "AgentService"),
        (fleet_pb2, "FleetService"),
        (audit_pb2, "AuditService"),
    )
    for method in module.DESCRIPTOR.services_by_name[name].methods
]
IDS = [m.full_name.removeprefix("corral.v1.") for m in METHODS]


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _builder(baked: Baked) -> Builder:
    return Builder(
        known_texts=[
            "",
            "i-1",
            "i-2",
            "i-9",
            "web",
            "local",
            "boot-1",
            baked.ref,
            baked.digest,
            f"forged@{baked.digest}",
            "sha256:" + "0" * 64,
        ],
        known_bytes=[b"", baked.manifest.root, b"/etc/hostname", b"/etc/new", baked.encoded[:64]],
    )


def _snapshot(served: RunningController) -> Any:
    """Everything durable the store holds, read on the server's loop."""

    def read() -> Any:
        assert served.controller is not None
        store = served.controller.store
        store.flush()
        instances = sorted(
            (i.id, i.group, i.state, i.seq, i.boot_id, i.image_ref, i.suspicious, i.taint)
            for i in store.list_instances()
        )
        return (
            instances,
            sorted(repr(g) for g in store.list_groups()),
            sorted(i.ref for i in store.list_images()),
            store.audit_log().head(),
        )

    return served.on_loop(read)


def _call(served: RunningController, method: MethodDescriptor, payload: Any) -> grpc.StatusCode:
    """Send ``payload`` (a message, a list of them, or raw bytes) and return the status."""
    assert served.channel is not None
    channel = served.channel
    path = _path(method)

    def serialize(item: Any) -> bytes:
        return item if isinstance(item, bytes) else item.SerializeToString()

    def raw(data: bytes) -> bytes:
        return data

    kinds: dict[tuple[bool, bool], Callable[..., Any]] = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
    }
    make = kinds[method.client_streaming, method.server_streaming]
    stub = make(path, request_serializer=serialize, response_deserializer=raw)
    request = iter(payload) if method.client_streaming else payload
    try:
        answer = stub(request, timeout=20)
        if method.server_streaming:
            list(answer)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        code = exc.code()
        assert code in ALLOWED, f"{path}: {code} {exc.details()}"
        assert "Traceback" not in (exc.details() or "") and len(exc.details() or "") <= 1024
        return code
    return grpc.StatusCode.OK


def _check(served: RunningController, method: MethodDescriptor, payload: Any) -> None:
    before = _snapshot(served)
    code = _call(served, method, payload)
    if code is not grpc.StatusCode.OK:
        assert _snapshot(served) == before, f"{_path(method)} refused {code} but changed the store"


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_generated_requests(
    served: RunningController, baked: Baked, method: MethodDescriptor
) -> None:
    request = _builder(baked).message(method.input_type)
    payloads = st.lists(request, min_size=1, max_size=3) if method.client_streaming else request

    @FUZZ
    @given(payload=payloads)
    def run(payload: Any) -> None:
        _check(served, method, payload)

    run()


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_raw_bytes(served: RunningController, method: MethodDescriptor) -> None:
    data = st.binary(max_size=200)
    payloads = st.lists(data, min_size=1, max_size=3) if method.client_streaming else data

    @FUZZ
    @given(payload=payloads)
    def run(payload: Any) -> None:
        _check(served, method, payload)

    run()


@pytest.mark.parametrize("drift", [False, True], ids=["Report", "ReportDrift"])
def test_valid_reports_with_one_field_fuzzed(
    served: RunningController, baked: Baked, drift: bool
) -> None:
    """A well-formed report with one header field over its whole range (and, for
    drift, generated changes), so the deeper checks see hostile values too."""
    builder = _builder(baked)
    descriptor = agent_pb2.ReportHeader.DESCRIPTOR
    changes = fleet_pb2.Taint.DESCRIPTOR.fields_by_name["changes"].message_type
    assert changes is not None
    change = builder.message(changes)
    method = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].methods_by_name[
        "ReportDrift" if drift else "Report"
    ]

    @FUZZ
    @given(
        field=st.sampled_from(list(descriptor.fields)),
        data=st.data(),
        seq=st.integers(2, 2**40),
        changes=st.lists(change, max_size=4),
        truncated=st.booleans(),
        total=st.integers(0, 2**32 - 1),
    )
    def run(
        field: Any, data: st.DataObject, seq: int, changes: list[Any], truncated: bool, total: int
    ) -> None:
        value = data.draw(builder.field(field))
        head = baked.header(instance_id="i-2", seq=seq, boot_id="boot-1")
        if field.type == field.TYPE_MESSAGE:
            getattr(head, field.name).CopyFrom(value)
        else:
            setattr(head, field.name, value)
        if drift:
            request: Any = agent_pb2.ReportDriftRequest(
                header=head, changes=changes, truncated=truncated, total_changes=total
            )
        else:
            request = agent_pb2.ReportRequest(header=head)
        _check(served, method, request)

    run()


def test_still_serving_and_the_store_survives_a_restart(served: RunningController) -> None:
    """Runs last in this module (pytest keeps file order without randomisation)."""
    health = health_pb2_grpc.HealthStub(served.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    before = _snapshot(served)
    served.stop()
    served.start()
    after = _snapshot(served)
    assert after[1:] == before[1:]
    assert [i[0] for i in after[0]] == [i[0] for i in before[0]]
    listed = served.fleet.ListInstances(fleet_pb2.ListInstancesRequest(page_size=1000), timeout=5)
    assert len(listed.instances) == len(before[0])
    controller = served.controller
    assert controller is not None
    verdict = served.on_loop(lambda: controller.store.audit_log().verify())
    assert verdict.ok, verdict


def test_every_request_type_can_be_built() -> None:
    for method in METHODS:
        assert GetMessageClass(method.input_type).DESCRIPTOR.full_name.startswith("corral.v1.")
