"""``corral.v1.FleetService``: what operators and auditors call.

Registers images (client-streaming: the manifest arrives in chunks, bounded in
total size), declares groups, lists and shows instances, taints by hand, rolls a
group out or back and resumes its breaker (:mod:`controller.engine.groups`). Every
name and id is checked at the edge (:mod:`controller.api.convert`) before any
lookup: empty or malformed is INVALID_ARGUMENT, well formed but absent is
NOT_FOUND. Lists are paged (:mod:`controller.api.paging`) and carry summaries;
``GetInstance`` carries the evidence, bounded by ``evidence_bytes``. Each call
ends and is counted by the one rule of :mod:`controller.api.edge`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from controller.api.convert import (
    echo,
    group_from_proto,
    group_to_proto,
    image_from_proto,
    image_to_proto,
    instance_id_of,
    instance_to_proto,
    name_of,
)
from controller.api.counting import method_counters
from controller.api.edge import Undecodable, served
from controller.api.limits import REASON_CHARS
from controller.api.paging import page_of
from controller.domain.model import Group, ImageRecord, Instance, InstanceState
from controller.engine.groups import resume_group, rollback_group, rollout_group
from controller.engine.reports import ControllerService
from controller.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from controller.security.caller import current_identity
from protos.corral.v1 import fleet_pb2, fleet_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]
ACTOR_METADATA = "corral-actor"
#: Prefix of an actor named only by what an unauthenticated client said.
UNVERIFIED = "unverified:"
MAX_REASON = REASON_CHARS
#: Evidence bytes GetInstance carries by default (a quarter of the default message limit).
DEFAULT_EVIDENCE_BYTES = 1 << 20
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
    """The operators' API over :class:`~controller.engine.reports.ControllerService`."""

    def __init__(
        self,
        service: ControllerService,
        *,
        max_manifest_bytes: int,
        providers: frozenset[str] | None = None,
        evidence_bytes: int = DEFAULT_EVIDENCE_BYTES,
    ) -> None:
        """``providers``: the configured provider names CreateGroup accepts (None: any)."""
        self._service = service
        self._max_manifest_bytes = max_manifest_bytes
        self._providers = providers
        self._evidence_bytes = evidence_bytes
        self._calls = method_counters(service.metrics.grpc_requests, SERVICE, METHODS)

    @served(_method("RegisterImage"))
    async def RegisterImage(
        self, request_iterator: AsyncIterator[fleet_pb2.RegisterImageRequest], context: Context
    ) -> fleet_pb2.RegisterImageResponse:
        image, manifest = await self._receive_image(request_iterator)
        record, created = self._service.register_image(image, manifest, actor=actor_of(context))
        return fleet_pb2.RegisterImageResponse(image=image_to_proto(record), created=created)

    async def _receive_image(
        self, requests: AsyncIterator[fleet_pb2.RegisterImageRequest]
    ) -> tuple[ImageRecord, bytes]:
        image: ImageRecord | None = None
        chunks: list[bytes] = []
        size = 0
        async for request in requests:
            if isinstance(request, Undecodable):
                raise InvalidArgumentError(
                    f"request: a message is not a valid {request.type_name}", reason="malformed"
                )
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

    @served(_method("ListImages"))
    async def ListImages(
        self, request: fleet_pb2.ListImagesRequest, context: Context
    ) -> fleet_pb2.ListImagesResponse:
        page = page_of(
            self._service.store.list_images(),
            key=_image_key,
            scope="images",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return fleet_pb2.ListImagesResponse(
            images=[image_to_proto(i) for i in page.items], next_page_token=page.next_page_token
        )

    @served(_method("CreateGroup"))
    async def CreateGroup(
        self, request: fleet_pb2.CreateGroupRequest, context: Context
    ) -> fleet_pb2.CreateGroupResponse:
        declared = group_from_proto(request.group)
        self._check_provider(declared)
        group, created = self._service.create_group(declared, actor=actor_of(context))
        if created:
            self._nudge(group.name)  # launch its instances now, not at the next sweep
        return fleet_pb2.CreateGroupResponse(group=self._group(group.name), created=created)

    def _check_provider(self, group: Group) -> None:
        configured = self._providers
        if configured is not None and group.provider not in configured:
            raise FailedPreconditionError(
                f"group.provider: {echo(group.provider)} is not configured on this controller "
                f"(configured: {', '.join(sorted(configured))}); add a [providers.NAME] table "
                "or fix the name",
                reason="unknown_provider",
            )

    @served(_method("ListGroups"))
    async def ListGroups(
        self, request: fleet_pb2.ListGroupsRequest, context: Context
    ) -> fleet_pb2.ListGroupsResponse:
        store = self._service.store
        page = page_of(
            store.list_groups(),
            key=_group_key,
            scope="groups",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        sizes = _live_sizes(store.list_instances()) if page.items else {}
        return fleet_pb2.ListGroupsResponse(
            groups=[group_to_proto(g, size=sizes.get(g.name, 0)) for g in page.items],
            next_page_token=page.next_page_token,
        )

    @served(_method("ListInstances"))
    async def ListInstances(
        self, request: fleet_pb2.ListInstancesRequest, context: Context
    ) -> fleet_pb2.ListInstancesResponse:
        store = self._service.store
        if request.group:
            name_of("group", request.group)
            if store.get_group(request.group) is None:
                raise NotFoundError(f"group {echo(request.group)} is not declared")
        page = page_of(
            store.list_instances(request.group),
            key=_instance_key,
            scope=f"instances/{request.group}",
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return fleet_pb2.ListInstancesResponse(
            instances=[instance_to_proto(i) for i in page.items],
            next_page_token=page.next_page_token,
        )

    @served(_method("GetInstance"))
    async def GetInstance(
        self, request: fleet_pb2.GetInstanceRequest, context: Context
    ) -> fleet_pb2.GetInstanceResponse:
        instance_id = instance_id_of("instance_id", request.instance_id)
        instance = self._service.store.get_instance(instance_id)
        if instance is None:
            raise NotFoundError(f"no instance {echo(instance_id)} has reported")
        return fleet_pb2.GetInstanceResponse(
            instance=instance_to_proto(instance, evidence_bytes=self._evidence_bytes)
        )

    @served(_method("TaintInstance"))
    async def TaintInstance(
        self, request: fleet_pb2.TaintInstanceRequest, context: Context
    ) -> fleet_pb2.TaintInstanceResponse:
        instance_id = instance_id_of("instance_id", request.instance_id)
        reason = request.reason.strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidArgumentError(
                f"reason: give 1-{MAX_REASON} characters saying why", reason="malformed"
            )
        instance = self._service.taint(instance_id, reason=reason, actor=actor_of(context))
        return fleet_pb2.TaintInstanceResponse(
            instance=instance_to_proto(instance, evidence_bytes=self._evidence_bytes)
        )

    @served(_method("Rollout"))
    async def Rollout(
        self, request: fleet_pb2.RolloutRequest, context: Context
    ) -> fleet_pb2.RolloutResponse:
        name = name_of("group", request.group)
        if not request.image_ref:
            raise InvalidArgumentError(
                "image_ref: is required (NAME@sha256:<64 hex> or an immutable provider id)",
                reason="malformed",
            )
        moved = rollout_group(
            self._service.store,
            name,
            request.image_ref,
            actor=actor_of(context),
            clock=self._service.clock,
        )
        self._nudge(name)
        return fleet_pb2.RolloutResponse(group=self._group(moved.group.name))

    @served(_method("Rollback"))
    async def Rollback(
        self, request: fleet_pb2.RollbackRequest, context: Context
    ) -> fleet_pb2.RollbackResponse:
        name = name_of("group", request.group)
        moved = rollback_group(
            self._service.store, name, actor=actor_of(context), clock=self._service.clock
        )
        self._nudge(name)
        return fleet_pb2.RollbackResponse(
            group=self._group(moved.group.name), previous_image_ref=moved.previous_image
        )

    @served(_method("ResumeGroup"))
    async def ResumeGroup(
        self, request: fleet_pb2.ResumeGroupRequest, context: Context
    ) -> fleet_pb2.ResumeGroupResponse:
        name = name_of("group", request.group)
        group = resume_group(
            self._service.store, name, clock=self._service.clock, actor=actor_of(context)
        )
        self._nudge(name)
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


def _image_key(image: ImageRecord) -> str:
    return image.ref


def _group_key(group: Group) -> str:
    return group.name


def _instance_key(instance: Instance) -> str:
    return instance.id


def _live_sizes(instances: list[Instance]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for instance in instances:
        if instance.state != InstanceState.RETIRED:
            sizes[instance.group] = sizes.get(instance.group, 0) + 1
    return sizes
