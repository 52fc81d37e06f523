"""``corral.v1.FleetService``: what operators and auditors call.

Registers images (client-streaming: the manifest arrives in chunks, bounded in
total size), declares groups, lists and shows instances, taints by hand, rolls a
group out or back and resumes its breaker (:mod:`controller.group_ops`). Each call
is counted by method and status code (:mod:`controller.api.counting`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from controller.api.convert import (
    NAME,
    check_match,
    group_from_proto,
    group_to_proto,
    image_from_proto,
    image_to_proto,
    instance_to_proto,
    status_of,
)
from controller.api.counting import counted, method_counters
from controller.domain.model import ImageRecord, InstanceState
from controller.errors import (
    ControllerError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from controller.group_ops import resume_group, rollback_group, rollout_group
from controller.security.caller import current_identity
from controller.service import ControllerService
from protos.corral.v1 import fleet_pb2, fleet_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]
ACTOR_METADATA = "corral-actor"
#: Prefix of an actor named only by what an unauthenticated client said.
UNVERIFIED = "unverified:"
MAX_REASON = 1024
SERVICE = "corral.v1.FleetService"
METHODS = (
    "RegisterImage",
    "ListImages",
    "CreateGroup",
    "ListGroups",
    "ListInstances",
    "GetInstance",
    "TaintInstance",
    "Rollout",
    "Rollback",
    "ResumeGroup",
)


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def actor_of(context: Context) -> str:
    """Who is calling, for audit records and taints.

    With mutual TLS, the certificate's identity (``operator:alice``) and nothing
    else: whatever the client claims in metadata is ignored. Without TLS
    (loopback or ``--insecure``) nobody is authenticated, so the ``corral-actor``
    metadata the CLI sends is recorded as a claim, ``unverified:alice@laptop``
    (else the peer address), never in a form a certificate identity could take.
    """
    identity = current_identity()
    if identity is not None:
        return identity.actor
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str) and value:
            return f"{UNVERIFIED}{value[:128]}"
    return f"{UNVERIFIED}{context.peer()}"


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    """The operators' API over :class:`~controller.service.ControllerService`."""

    def __init__(self, service: ControllerService, *, max_manifest_bytes: int) -> None:
        self._service = service
        self._max_manifest_bytes = max_manifest_bytes
        self._calls = method_counters(service.metrics.grpc_requests, SERVICE, METHODS)

    @counted(_method("RegisterImage"))
    async def RegisterImage(
        self, request_iterator: AsyncIterator[fleet_pb2.RegisterImageRequest], context: Context
    ) -> fleet_pb2.RegisterImageResponse:
        try:
            image, manifest = await self._receive_image(request_iterator)
            record, created = self._service.register_image(image, manifest, actor=actor_of(context))
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        return fleet_pb2.RegisterImageResponse(image=image_to_proto(record), created=created)

    async def _receive_image(
        self, requests: AsyncIterator[fleet_pb2.RegisterImageRequest]
    ) -> tuple[ImageRecord, bytes]:
        image: ImageRecord | None = None
        chunks: list[bytes] = []
        size = 0
        async for request in requests:
            if request.HasField("image"):
                if image is not None:
                    raise InvalidArgumentError("image: only the first message may carry it")
                image = image_from_proto(request.image)
            elif image is None:
                raise InvalidArgumentError("image: the first message must carry the image")
            size += len(request.manifest_chunk)
            if size > self._max_manifest_bytes:
                raise ResourceExhaustedError(
                    f"manifest is larger than the {self._max_manifest_bytes} bytes this "
                    "controller accepts (max_manifest_bytes)"
                )
            chunks.append(request.manifest_chunk)
        if image is None:
            raise InvalidArgumentError("image: no message carried the image")
        return image, b"".join(chunks)

    @counted(_method("ListImages"))
    async def ListImages(
        self, request: fleet_pb2.ListImagesRequest, context: Context
    ) -> fleet_pb2.ListImagesResponse:
        images = self._service.store.list_images()
        return fleet_pb2.ListImagesResponse(images=[image_to_proto(i) for i in images])

    @counted(_method("CreateGroup"))
    async def CreateGroup(
        self, request: fleet_pb2.CreateGroupRequest, context: Context
    ) -> fleet_pb2.CreateGroupResponse:
        try:
            group, created = self._service.create_group(
                group_from_proto(request.group), actor=actor_of(context)
            )
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        if created:
            self._nudge(group.name)  # launch its instances now, not at the next sweep
        return fleet_pb2.CreateGroupResponse(group=self._group(group.name), created=created)

    @counted(_method("ListGroups"))
    async def ListGroups(
        self, request: fleet_pb2.ListGroupsRequest, context: Context
    ) -> fleet_pb2.ListGroupsResponse:
        names = [group.name for group in self._service.store.list_groups()]
        return fleet_pb2.ListGroupsResponse(groups=[self._group(name) for name in names])

    @counted(_method("ListInstances"))
    async def ListInstances(
        self, request: fleet_pb2.ListInstancesRequest, context: Context
    ) -> fleet_pb2.ListInstancesResponse:
        store = self._service.store
        try:
            if request.group:
                check_match("group", request.group, NAME, what="group name")
                if store.get_group(request.group) is None:
                    raise NotFoundError(f"group {request.group!r} is not declared")
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        instances = store.list_instances(request.group)
        return fleet_pb2.ListInstancesResponse(instances=[instance_to_proto(i) for i in instances])

    @counted(_method("GetInstance"))
    async def GetInstance(
        self, request: fleet_pb2.GetInstanceRequest, context: Context
    ) -> fleet_pb2.GetInstanceResponse:
        instance = self._service.store.get_instance(request.instance_id)
        if instance is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no instance {request.instance_id!r} has reported"
            )
        return fleet_pb2.GetInstanceResponse(instance=instance_to_proto(instance))

    @counted(_method("TaintInstance"))
    async def TaintInstance(
        self, request: fleet_pb2.TaintInstanceRequest, context: Context
    ) -> fleet_pb2.TaintInstanceResponse:
        try:
            reason = request.reason.strip()
            if not reason or len(reason) > MAX_REASON:
                raise InvalidArgumentError(f"reason: give 1-{MAX_REASON} characters saying why")
            instance = self._service.taint(
                request.instance_id, reason=reason, actor=actor_of(context)
            )
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        return fleet_pb2.TaintInstanceResponse(instance=instance_to_proto(instance))

    @counted(_method("Rollout"))
    async def Rollout(
        self, request: fleet_pb2.RolloutRequest, context: Context
    ) -> fleet_pb2.RolloutResponse:
        try:
            moved = rollout_group(
                self._service.store,
                request.group,
                request.image_ref,
                actor=actor_of(context),
                clock=self._service.clock,
            )
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        self._nudge(request.group)
        return fleet_pb2.RolloutResponse(group=self._group(moved.group.name))

    @counted(_method("Rollback"))
    async def Rollback(
        self, request: fleet_pb2.RollbackRequest, context: Context
    ) -> fleet_pb2.RollbackResponse:
        try:
            moved = rollback_group(
                self._service.store,
                request.group,
                actor=actor_of(context),
                clock=self._service.clock,
            )
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        self._nudge(request.group)
        return fleet_pb2.RollbackResponse(
            group=self._group(moved.group.name), previous_image_ref=moved.previous_image
        )

    @counted(_method("ResumeGroup"))
    async def ResumeGroup(
        self, request: fleet_pb2.ResumeGroupRequest, context: Context
    ) -> fleet_pb2.ResumeGroupResponse:
        try:
            group = resume_group(
                self._service.store,
                request.group,
                clock=self._service.clock,
                actor=actor_of(context),
            )
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        self._nudge(request.group)
        return fleet_pb2.ResumeGroupResponse(group=self._group(group.name))

    def _nudge(self, group: str) -> None:
        listener = self._service.state_listener
        if listener is not None:
            listener(group)

    def _group(self, name: str) -> fleet_pb2.Group:
        store = self._service.store
        group = store.get_group(name)
        assert group is not None
        live = sum(1 for i in store.list_instances(name) if i.state != InstanceState.RETIRED)
        return group_to_proto(group, size=live)
