"""Proto ↔ domain, and controller errors → gRPC status codes.

This module and the servicers are the only code that sees protobuf types. Every
field an agent or operator sends is validated here; anything malformed becomes
:class:`~controller.errors.InvalidArgumentError` (INVALID_ARGUMENT) with a
message naming the field, before the service sees it.
"""

from __future__ import annotations

import re

import grpc

from agent.diff import Change, ChangeKind
from agent.errors import ManifestError
from agent.manifest import entry_from_proto, entry_to_proto
from agent.paths import display_path
from controller.audit.errors import (
    AuditError,
    CheckpointError,
    ExportFormatError,
    InvalidEventError,
)
from controller.domain.model import (
    DriftKind,
    Evidence,
    Footprint,
    Group,
    GroupMode,
    ImageRecord,
    Instance,
    InstanceState,
    Report,
    Taint,
)
from controller.errors import (
    AlreadyExistsError,
    ConflictError,
    ControllerError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from protos.corral.v1 import agent_pb2, fleet_pb2, manifest_pb2

STATUS_CODES: dict[type[ControllerError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    ConflictError: grpc.StatusCode.ABORTED,
    # The audit log: a bad event or export is the caller's; a checkpoint that is
    # not retained is a state refusal; any other audit failure is the store
    # being unreadable for now (retry).
    InvalidEventError: grpc.StatusCode.INVALID_ARGUMENT,
    ExportFormatError: grpc.StatusCode.INVALID_ARGUMENT,
    CheckpointError: grpc.StatusCode.FAILED_PRECONDITION,
    AuditError: grpc.StatusCode.UNAVAILABLE,
}

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Digests, refs, boot ids: printable ASCII, no spaces.
TOKEN = re.compile(r"[\x21-\x7e]+")
MAX_SEQ = 2**63 - 1
MAX_PATH = 4096
ROOT_BYTES = 32

_STATES = {
    state: agent_pb2.InstanceState.Value(f"INSTANCE_STATE_{state.name}") for state in InstanceState
}
_CHANGE_KINDS = {
    manifest_pb2.CHANGE_KIND_ADDED: ChangeKind.ADDED,
    manifest_pb2.CHANGE_KIND_REMOVED: ChangeKind.REMOVED,
    manifest_pb2.CHANGE_KIND_MODIFIED: ChangeKind.MODIFIED,
}
_CHANGE_KIND_VALUES = {kind: value for value, kind in _CHANGE_KINDS.items()}
_MODES = {
    fleet_pb2.GROUP_MODE_OBSERVE: GroupMode.OBSERVE,
    fleet_pb2.GROUP_MODE_ENFORCE: GroupMode.ENFORCE,
}
_MODE_VALUES = {mode: value for value, mode in _MODES.items()}
_DRIFT_KINDS = {
    DriftKind.IMAGE: fleet_pb2.DRIFT_KIND_IMAGE,
    DriftKind.FILE: fleet_pb2.DRIFT_KIND_FILE,
    DriftKind.MANUAL: fleet_pb2.DRIFT_KIND_MANUAL,
}


def status_of(error: ControllerError) -> grpc.StatusCode:
    """The gRPC status code for ``error`` (INTERNAL for an unmapped subclass)."""
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


def _invalid(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {problem}", reason="malformed")


def check_match(field: str, value: str, pattern: re.Pattern[str], *, what: str) -> str:
    if not pattern.fullmatch(value):
        raise _invalid(field, f"{value[:80]!r} is not a valid {what}")
    return value


# Agent reports ----------------------------------------------------------------


def report_from_proto(header: agent_pb2.ReportHeader, *, present: bool) -> Report:
    """The domain report of ``header``. Raises InvalidArgumentError naming the bad field.

    Every field is read once; a well-formed header (the steady state) is checked
    by one combined test and only a bad one is re-examined field by field to say
    which field is wrong.
    """
    if not present:
        raise _invalid("header", "is missing")
    instance_id = header.instance_id
    group = header.group
    image_ref = header.image_ref
    image_digest = header.image_digest
    boot_id = header.boot_id
    root = header.root
    seq = header.seq
    scanned_at_ms = header.scanned_at_ms
    agent_version = header.agent_version
    if not (
        len(root) == ROOT_BYTES
        and seq <= MAX_SEQ
        and scanned_at_ms >= 0
        and len(agent_version) <= 64
        and len(image_ref) <= 512
        and len(image_digest) <= 256
        and len(boot_id) <= 64
        and INSTANCE_ID.fullmatch(instance_id)
        and NAME.fullmatch(group)
        and TOKEN.fullmatch(image_ref)
        and TOKEN.fullmatch(image_digest)
        and TOKEN.fullmatch(boot_id)
    ):
        raise _bad_header(header)
    footprint = header.footprint
    return Report(
        instance_id=instance_id,
        group=group,
        image_ref=image_ref,
        image_digest=image_digest,
        root=root,
        seq=seq,
        boot_id=boot_id,
        scanned_at_ms=scanned_at_ms,
        footprint=Footprint(rss_bytes=footprint.rss_bytes, cpu_millis=footprint.cpu_millis),
        agent_version=agent_version,
    )


def _bad_header(header: agent_pb2.ReportHeader) -> InvalidArgumentError:
    """The error naming the first bad field of a header that failed the combined check."""
    try:
        if len(header.root) != ROOT_BYTES:
            raise _invalid("header.root", f"must be {ROOT_BYTES} bytes, got {len(header.root)}")
        if header.seq > MAX_SEQ:
            raise _invalid("header.seq", "is too large")
        if header.scanned_at_ms < 0:
            raise _invalid("header.scanned_at_ms", "must not be negative")
        if len(header.agent_version) > 64:
            raise _invalid("header.agent_version", "is longer than 64 characters")
        check_match("header.instance_id", header.instance_id, INSTANCE_ID, what="instance id")
        check_match("header.group", header.group, NAME, what="group name")
        _token("header.image_ref", header.image_ref, limit=512)
        _token("header.image_digest", header.image_digest, limit=256)
        _token("header.boot_id", header.boot_id, limit=64)
    except InvalidArgumentError as exc:
        return exc
    return _invalid("header", "is malformed")


def evidence_from_proto(request: agent_pb2.ReportDriftRequest) -> Evidence:
    """The changes of a drift report, each checked for shape."""
    changes = tuple(
        _change_from_proto(change, f"changes[{i}]") for i, change in enumerate(request.changes)
    )
    if request.truncated and request.total_changes < len(changes):
        raise _invalid("total_changes", "is smaller than the number of changes sent")
    return Evidence(
        changes=changes,
        truncated=request.truncated,
        total_changes=request.total_changes or len(changes),
    )


def _change_from_proto(change: manifest_pb2.Change, field: str) -> Change:
    kind = _CHANGE_KINDS.get(change.kind)
    if kind is None:
        raise _invalid(f"{field}.kind", f"unknown change kind {change.kind}")
    check_path(f"{field}.path", change.path)
    entry = None
    if change.HasField("entry"):
        if kind == ChangeKind.REMOVED:
            raise _invalid(f"{field}.entry", "a removed path carries no entry")
        try:
            entry = entry_from_proto(change.entry)
        except ManifestError as exc:
            raise _invalid(f"{field}.entry", str(exc)) from exc
        if entry.path != change.path:
            raise _invalid(f"{field}.entry.path", "differs from the change's path")
    elif kind != ChangeKind.REMOVED:
        raise _invalid(f"{field}.entry", f"an {kind.value} path needs its entry")
    if len(change.attributes) > 16 or any(len(a) > 32 for a in change.attributes):
        raise _invalid(f"{field}.attributes", "too many or too long")
    return Change(kind, change.path, entry, tuple(change.attributes))


def check_path(field: str, path: bytes) -> None:
    """Refuse a path that is not absolute and normalised, or holds a NUL byte."""
    if not path.startswith(b"/") or len(path) > MAX_PATH or b"\x00" in path:
        raise _invalid(field, f"{display_path(path[:200])!r} is not an absolute path")
    if path != b"/" and any(part in (b"", b".", b"..") for part in path[1:].split(b"/")):
        raise _invalid(field, f"{display_path(path[:200])!r} is not a normalised path")


def _token(field: str, value: str, *, limit: int) -> str:
    if not value or len(value) > limit or not TOKEN.fullmatch(value):
        raise _invalid(field, f"must be 1-{limit} printable characters without spaces")
    return value


def state_to_proto(state: InstanceState) -> agent_pb2.InstanceState.ValueType:
    return _STATES[state]


# Fleet: images, groups, instances ---------------------------------------------


def image_from_proto(image: fleet_pb2.Image) -> ImageRecord:
    if len(image.root) != ROOT_BYTES:
        raise _invalid("image.root", f"must be {ROOT_BYTES} bytes")
    return ImageRecord(
        name=check_match("image.name", image.name, NAME, what="image name"),
        version=_token("image.version", image.version, limit=128),
        ref=_token("image.ref", image.ref, limit=512),
        digest=_token("image.digest", image.digest, limit=256),
        manifest_digest=_token("image.manifest_digest", image.manifest_digest, limit=128),
        root=image.root,
        entry_count=image.entry_count,
        byte_count=image.byte_count,
    )


def image_to_proto(image: ImageRecord) -> fleet_pb2.Image:
    return fleet_pb2.Image(
        name=image.name,
        version=image.version,
        ref=image.ref,
        digest=image.digest,
        manifest_digest=image.manifest_digest,
        root=image.root,
        entry_count=image.entry_count,
        byte_count=image.byte_count,
        registered_at_ms=int(image.registered_at * 1000),
        registered_by=image.registered_by,
    )


def group_from_proto(group: fleet_pb2.Group) -> Group:
    mode = _MODES.get(group.mode, GroupMode.OBSERVE if group.mode == 0 else None)
    if mode is None:
        raise _invalid("group.mode", f"unknown mode {group.mode}")
    return Group(
        name=check_match("group.name", group.name, NAME, what="group name"),
        desired_image_ref=_token("group.desired_image_ref", group.desired_image_ref, limit=512),
        mode=mode,
        provider=check_match("group.provider", group.provider or "local", NAME, what="provider"),
        max_concurrent_replacements=group.max_concurrent_replacements,
        desired_size=group.desired_size,
    )


def group_to_proto(group: Group, *, size: int = 0) -> fleet_pb2.Group:
    return fleet_pb2.Group(
        name=group.name,
        desired_image_ref=group.desired_image_ref,
        desired_image_digest=group.desired_image_digest,
        mode=_MODE_VALUES[group.mode],
        provider=group.provider,
        max_concurrent_replacements=group.max_concurrent_replacements,
        breaker_open=group.breaker_open,
        size=size,
        desired_size=group.desired_size,
    )


def instance_to_proto(instance: Instance) -> fleet_pb2.Instance:
    message = fleet_pb2.Instance(
        id=instance.id,
        group=instance.group,
        state=state_to_proto(instance.state),
        image_ref=instance.image_ref,
        image_digest=instance.image_digest,
        root=instance.root,
        first_seen_ms=int(instance.first_seen * 1000),
        last_report_ms=int(instance.last_report * 1000),
        last_seq=instance.seq,
        boot_id=instance.boot_id,
        suspicious=instance.suspicious,
        footprint=agent_pb2.AgentFootprint(
            rss_bytes=instance.footprint.rss_bytes, cpu_millis=instance.footprint.cpu_millis
        ),
        replaces=instance.replaces,
    )
    if instance.taint is not None:
        message.taint.CopyFrom(taint_to_proto(instance.taint))
    return message


def taint_to_proto(taint: Taint) -> fleet_pb2.Taint:
    message = fleet_pb2.Taint(
        kind=_DRIFT_KINDS[taint.kind],
        reason=taint.reason,
        actor=taint.actor,
        at_ms=int(taint.at * 1000),
        evidence_verified=taint.evidence_verified,
        evidence_truncated=taint.evidence_truncated,
    )
    for change in taint.changes:
        item = message.changes.add(
            kind=_CHANGE_KIND_VALUES[change.kind],
            path=change.path,
            attributes=change.attributes,
        )
        if change.entry is not None:
            item.entry.CopyFrom(entry_to_proto(change.entry))
    return message
