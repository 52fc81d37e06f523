"""Proto ↔ domain, and controller errors → gRPC status codes.

This module and the servicers are the only code that sees protobuf types. Every
field an agent or operator sends is validated here against its documented range
(:mod:`controller.api.limits`, docs/api.md); anything out of range becomes
:class:`~controller.errors.InvalidArgumentError` (INVALID_ARGUMENT) with a
bounded message naming the field, before the service sees it. A value echoed in
a message is escaped and truncated (:func:`echo`, :func:`echo_path`), so no
caller can make an answer large or unprintable.
"""

from __future__ import annotations

import json
import re

import grpc

from agent.errors import ManifestError
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import entry_from_proto, entry_to_proto
from agent.manifest.report import Evidence, Footprint, Report
from agent.paths import display_path
from controller.api.limits import (
    AGENT_VERSION_CHARS,
    ATTRIBUTE_CHARS,
    BOOT_ID_CHARS,
    ECHO_CHARS,
    IMAGE_DIGEST_CHARS,
    IMAGE_REF_CHARS,
    IMAGE_VERSION_CHARS,
    INSTANCE_ID,
    INSTANCE_ID_CHARS,
    INT64_MAX,
    MANIFEST_DIGEST_CHARS,
    MAX_ATTRIBUTES,
    MAX_CHANGES,
    MAX_CONCURRENT_REPLACEMENTS,
    MAX_DESIRED_SIZE,
    MAX_PATH,
    MAX_TIME_MS,
    NAME,
    NAME_CHARS,
    PRINTABLE,
    ROOT_BYTES,
    TOKEN,
)
from controller.audit.errors import (
    AuditError,
    CheckpointError,
    ExportFormatError,
    InvalidEventError,
)
from controller.domain.model import (
    DriftKind,
    Group,
    GroupMode,
    ImageRecord,
    Instance,
    InstanceState,
    Taint,
)
from controller.domain.rollout import ImageNotRegisteredError
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

#: One rule (AIP-193, docs/api.md): the most specific class in an error's MRO decides.
STATUS_CODES: dict[type[ControllerError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    # An image a request refers to (not the resource it names) is a precondition:
    # the same unregistered image answers FAILED_PRECONDITION from every RPC.
    ImageNotRegisteredError: grpc.StatusCode.FAILED_PRECONDITION,
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

MAX_SEQ = INT64_MAX
#: Bytes of a path shown in a message (then ``...``).
ECHO_PATH_BYTES = 200

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
#: Bytes a repeated field adds around each change (tag and length).
_CHANGE_FRAMING = 8
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


def echo(value: str) -> str:
    """``value`` quoted for a message: escaped (JSON style, ASCII only) and truncated."""
    shown = value[:ECHO_CHARS]
    text = json.dumps(shown)
    more = len(value) - len(shown)
    return f"{text}... ({more} more characters)" if more > 0 else text


def echo_path(path: bytes) -> str:
    """``path`` in the documented display form (:func:`agent.paths.display_path`), truncated."""
    shown = display_path(path[:ECHO_PATH_BYTES])
    return (
        f"{shown}... ({len(path) - ECHO_PATH_BYTES} more bytes)"
        if len(path) > ECHO_PATH_BYTES
        else shown
    )


def check_match(field: str, value: str, pattern: re.Pattern[str], *, what: str) -> str:
    """``value`` if it is non-empty and matches ``pattern``; else INVALID_ARGUMENT."""
    if not value:
        raise _invalid(field, f"is empty; give a valid {what}")
    if not pattern.fullmatch(value):
        raise _invalid(field, f"{echo(value)} is not a valid {what}")
    return value


def instance_id_of(field: str, value: str) -> str:
    """A requested instance id (1-128 of ``A-Z a-z 0-9 . _ : -``); else INVALID_ARGUMENT."""
    return check_match(
        field,
        value,
        INSTANCE_ID,
        what=f"instance id (1-{INSTANCE_ID_CHARS} letters, digits, '.', '_', ':' or '-')",
    )


def name_of(field: str, value: str, *, what: str = "group name") -> str:
    """A requested group/image/provider name (1-63 of ``A-Z a-z 0-9 . _ -``)."""
    return check_match(
        field, value, NAME, what=f"{what} (1-{NAME_CHARS} letters, digits, '.', '_' or '-')"
    )


def check_int(field: str, value: int, *, low: int = 0, high: int = INT64_MAX) -> int:
    """``value`` if ``low <= value <= high``; else INVALID_ARGUMENT naming the range."""
    if not low <= value <= high:
        raise _invalid(field, f"{value} is outside {low}..{high}")
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
    footprint = header.footprint
    rss_bytes = footprint.rss_bytes
    cpu_millis = footprint.cpu_millis
    if not (
        len(root) == ROOT_BYTES
        and seq <= MAX_SEQ
        and 0 <= scanned_at_ms <= MAX_TIME_MS
        and rss_bytes <= INT64_MAX
        and cpu_millis <= INT64_MAX
        and len(agent_version) <= AGENT_VERSION_CHARS
        and len(image_ref) <= IMAGE_REF_CHARS
        and len(image_digest) <= IMAGE_DIGEST_CHARS
        and len(boot_id) <= BOOT_ID_CHARS
        and INSTANCE_ID.fullmatch(instance_id)
        and NAME.fullmatch(group)
        and TOKEN.fullmatch(image_digest)
        and TOKEN.fullmatch(boot_id)
        and PRINTABLE.fullmatch(agent_version)
        and (image_ref == image_digest or image_ref.endswith(f"@{image_digest}"))
        and TOKEN.fullmatch(image_ref)
    ):
        raise _bad_header(header)
    return Report(
        instance_id=instance_id,
        group=group,
        image_ref=image_ref,
        image_digest=image_digest,
        root=root,
        seq=seq,
        boot_id=boot_id,
        scanned_at_ms=scanned_at_ms,
        footprint=Footprint(rss_bytes=rss_bytes, cpu_millis=cpu_millis),
        agent_version=agent_version,
    )


def _bad_header(header: agent_pb2.ReportHeader) -> InvalidArgumentError:
    """The error naming the first bad field of a header that failed the combined check."""
    try:
        if len(header.root) != ROOT_BYTES:
            raise _invalid("header.root", f"must be {ROOT_BYTES} bytes, got {len(header.root)}")
        check_int("header.seq", header.seq, high=MAX_SEQ)
        check_int("header.scanned_at_ms", header.scanned_at_ms, high=MAX_TIME_MS)
        check_int("header.footprint.rss_bytes", header.footprint.rss_bytes)
        check_int("header.footprint.cpu_millis", header.footprint.cpu_millis)
        if len(header.agent_version) > AGENT_VERSION_CHARS or not PRINTABLE.fullmatch(
            header.agent_version
        ):
            raise _invalid(
                "header.agent_version",
                f"must be at most {AGENT_VERSION_CHARS} printable ASCII characters",
            )
        instance_id_of("header.instance_id", header.instance_id)
        name_of("header.group", header.group)
        _token("header.image_ref", header.image_ref, limit=IMAGE_REF_CHARS)
        _token("header.image_digest", header.image_digest, limit=IMAGE_DIGEST_CHARS)
        _token("header.boot_id", header.boot_id, limit=BOOT_ID_CHARS)
        ref, digest = header.image_ref, header.image_digest
        if ref != digest and not ref.endswith(f"@{digest}"):
            raise _invalid(
                "header.image_ref",
                f"{echo(ref)} does not name header.image_digest {echo(digest)}: "
                "give NAME@DIGEST or the digest itself",
            )
    except InvalidArgumentError as exc:
        return exc
    return _invalid("header", "is malformed")


def evidence_from_proto(request: agent_pb2.ReportDriftRequest) -> Evidence:
    """The changes of a drift report, each checked for shape."""
    if len(request.changes) > MAX_CHANGES:
        raise _invalid(
            "changes", f"{len(request.changes)} changes; at most {MAX_CHANGES} per report"
        )
    changes = tuple(
        _change_from_proto(change, f"changes[{i}]") for i, change in enumerate(request.changes)
    )
    if request.total_changes < len(changes) and (request.truncated or request.total_changes):
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
        _check_entry(f"{field}.entry", change.entry)
        try:
            entry = entry_from_proto(change.entry)
        except ManifestError:
            raise _invalid(f"{field}.entry", "has an unknown type or error value") from None
        if entry.path != change.path:
            raise _invalid(f"{field}.entry.path", "differs from the change's path")
    elif kind != ChangeKind.REMOVED:
        raise _invalid(f"{field}.entry", f"an {kind.value} path needs its entry")
    if len(change.attributes) > MAX_ATTRIBUTES or any(
        len(a) > ATTRIBUTE_CHARS or not PRINTABLE.fullmatch(a) for a in change.attributes
    ):
        raise _invalid(
            f"{field}.attributes",
            f"at most {MAX_ATTRIBUTES}, each at most {ATTRIBUTE_CHARS} printable characters",
        )
    return Change(kind, change.path, entry, tuple(change.attributes))


def _check_entry(field: str, entry: manifest_pb2.Entry) -> None:
    check_int(f"{field}.size", entry.size)
    if len(entry.sha256) not in (0, 32):
        raise _invalid(f"{field}.sha256", f"must be empty or 32 bytes, got {len(entry.sha256)}")
    if len(entry.link_target) > MAX_PATH:
        raise _invalid(f"{field}.link_target", f"is longer than {MAX_PATH} bytes")


def check_path(field: str, path: bytes) -> None:
    """Refuse a path that is not absolute and normalised, or holds a NUL byte."""
    if not path.startswith(b"/") or len(path) > MAX_PATH or b"\x00" in path:
        raise _invalid(
            field, f"{echo_path(path)} is not an absolute path of at most {MAX_PATH} bytes"
        )
    if path != b"/" and any(part in (b"", b".", b"..") for part in path[1:].split(b"/")):
        raise _invalid(field, f"{echo_path(path)} is not a normalised path")


def _token(field: str, value: str, *, limit: int) -> str:
    if not value or len(value) > limit or not TOKEN.fullmatch(value):
        raise _invalid(field, f"must be 1-{limit} printable ASCII characters without spaces")
    return value


def state_to_proto(state: InstanceState) -> agent_pb2.InstanceState.ValueType:
    return _STATES[state]


# Fleet: images, groups, instances ---------------------------------------------


def image_from_proto(image: fleet_pb2.Image) -> ImageRecord:
    if len(image.root) != ROOT_BYTES:
        raise _invalid("image.root", f"must be {ROOT_BYTES} bytes")
    return ImageRecord(
        name=name_of("image.name", image.name, what="image name"),
        version=_token("image.version", image.version, limit=IMAGE_VERSION_CHARS),
        ref=_token("image.ref", image.ref, limit=IMAGE_REF_CHARS),
        digest=_token("image.digest", image.digest, limit=IMAGE_DIGEST_CHARS),
        manifest_digest=_token(
            "image.manifest_digest", image.manifest_digest, limit=MANIFEST_DIGEST_CHARS
        ),
        root=image.root,
        entry_count=check_int("image.entry_count", image.entry_count),
        byte_count=check_int("image.byte_count", image.byte_count),
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
        name=name_of("group.name", group.name),
        desired_image_ref=_token(
            "group.desired_image_ref", group.desired_image_ref, limit=IMAGE_REF_CHARS
        ),
        mode=mode,
        provider=name_of("group.provider", group.provider or "local", what="provider name"),
        max_concurrent_replacements=check_int(
            "group.max_concurrent_replacements",
            group.max_concurrent_replacements,
            high=MAX_CONCURRENT_REPLACEMENTS,
        ),
        desired_size=check_int("group.desired_size", group.desired_size, high=MAX_DESIRED_SIZE),
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


def instance_to_proto(instance: Instance, *, evidence_bytes: int = 0) -> fleet_pb2.Instance:
    """The wire form of ``instance``; its taint carries changes up to ``evidence_bytes``.

    0 (lists) carries none: a list holds summaries, ``GetInstance`` the evidence.
    ``taint.changes_recorded`` always says how many changes are stored.
    """
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
        message.taint.CopyFrom(taint_to_proto(instance.taint, evidence_bytes=evidence_bytes))
    return message


def taint_to_proto(taint: Taint, *, evidence_bytes: int) -> fleet_pb2.Taint:
    message = fleet_pb2.Taint(
        kind=_DRIFT_KINDS[taint.kind],
        reason=taint.reason,
        actor=taint.actor,
        at_ms=int(taint.at * 1000),
        evidence_verified=taint.evidence_verified,
        evidence_truncated=taint.evidence_truncated,
        changes_recorded=len(taint.changes),
        baseline_mismatch=taint.baseline_mismatch,
    )
    budget = evidence_bytes
    for change in taint.changes:
        if budget <= 0:
            break
        item = message.changes.add(
            kind=_CHANGE_KIND_VALUES[change.kind],
            path=change.path,
            attributes=change.attributes,
        )
        if change.entry is not None:
            item.entry.CopyFrom(entry_to_proto(change.entry))
        budget -= item.ByteSize() + _CHANGE_FRAMING
        if budget < 0:
            del message.changes[-1]
    return message
