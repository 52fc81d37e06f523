"""The agent's gRPC edge: reports in, ``AgentService`` calls out, statuses mapped back.

This is the only agent module that imports grpc or the ``agent_pb2`` messages.
It converts the domain report (:mod:`agent.report`) to protobuf, calls the
controller with a deadline on every call, lets the channel retry
``UNAVAILABLE`` (connection refused, server restarting) a few times on its
own, and maps what still fails to the agent's errors:

- ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``, ``ABORTED``,
  ``CANCELLED`` → :class:`RetryableError` (keep the report, back off, retry;
  a rate-limited call waits at least the ``retry-after-ms`` the controller
  sent);
- anything else (``INVALID_ARGUMENT``, ``FAILED_PRECONDITION`` for an undeclared
  group or a stale ``seq``, ``ALREADY_EXISTS`` for a ``seq`` already used with a
  different root, ...) → :class:`ReportRejectedError` with the status code name and the
  controller's message (retrying the same report cannot help).

Keepalive pings every 60 s while a call is open (the controller must allow
``grpc.http2.min_ping_interval_without_data_ms`` ≤ 60 000).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import grpc

from agent.diff import Change, ChangeKind
from agent.errors import AgentError, ReportRejectedError, RetryableError
from agent.manifest import entry_to_proto
from agent.report import Delivery, InstanceState, PendingReport, ReportHeader
from protos.corral.v1 import agent_pb2, agent_pb2_grpc, manifest_pb2

SERVICE = "corral.v1.AgentService"
RETRY_AFTER_METADATA = "retry-after-ms"
#: A controller's retry hint is honoured up to this many seconds.
MAX_RETRY_AFTER = 3600.0
MAX_SEND_BYTES = 4 << 20
MAX_RECEIVE_BYTES = 1 << 20

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}
_KIND = {
    ChangeKind.ADDED: manifest_pb2.CHANGE_KIND_ADDED,
    ChangeKind.REMOVED: manifest_pb2.CHANGE_KIND_REMOVED,
    ChangeKind.MODIFIED: manifest_pb2.CHANGE_KIND_MODIFIED,
}
_STATE = {
    agent_pb2.INSTANCE_STATE_PENDING: InstanceState.PENDING,
    agent_pb2.INSTANCE_STATE_CONFORMANT: InstanceState.CONFORMANT,
    agent_pb2.INSTANCE_STATE_TAINTED: InstanceState.TAINTED,
    agent_pb2.INSTANCE_STATE_REPLACING: InstanceState.REPLACING,
    agent_pb2.INSTANCE_STATE_RETIRED: InstanceState.RETIRED,
    agent_pb2.INSTANCE_STATE_UNKNOWN: InstanceState.UNKNOWN,
}


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files for a TLS (or, with cert and key, mutual TLS) channel."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files now; the key's content is never logged or kept elsewhere."""

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as handle:
                    return handle.read()
            except OSError as exc:
                raise AgentError(f"cannot read TLS file {path}: {exc.strerror}") from exc

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def service_config(*, deadline: float) -> str:
    """The channel's retry policy: a few quick retries of UNAVAILABLE only."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE}],
                    "timeout": f"{deadline:.3f}s",
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel_options(*, deadline: float, agent_version: str) -> list[tuple[str, str | int]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(deadline=deadline)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.primary_user_agent", f"corral-agent/{agent_version}"),
    ]


def header_to_proto(header: ReportHeader) -> agent_pb2.ReportHeader:
    return agent_pb2.ReportHeader(
        instance_id=header.instance_id,
        group=header.group,
        image_ref=header.image_ref,
        image_digest=header.image_digest,
        root=header.root,
        seq=header.seq,
        boot_id=header.boot_id,
        scanned_at_ms=header.scanned_at_ms,
        footprint=agent_pb2.AgentFootprint(
            rss_bytes=header.footprint.rss_bytes, cpu_millis=header.footprint.cpu_millis
        ),
        agent_version=header.agent_version,
    )


def change_to_proto(change: Change) -> manifest_pb2.Change:
    message = manifest_pb2.Change(
        kind=_KIND[change.kind], path=change.path, attributes=list(change.attributes)
    )
    if change.entry is not None:
        message.entry.CopyFrom(entry_to_proto(change.entry))
    return message


def report_request(report: PendingReport) -> agent_pb2.ReportRequest:
    return agent_pb2.ReportRequest(header=header_to_proto(report.header))


def drift_request(report: PendingReport) -> agent_pb2.ReportDriftRequest:
    evidence = report.evidence
    if evidence is None:
        raise ValueError("a drift request needs evidence")
    message = agent_pb2.ReportDriftRequest(
        header=header_to_proto(report.header),
        truncated=evidence.truncated,
        total_changes=evidence.total_changes,
    )
    message.changes.extend(change_to_proto(change) for change in evidence.changes)
    return message


def retry_after(exc: grpc.RpcError) -> float:
    """Seconds the controller asked us to wait (``retry-after-ms`` trailer); 0 if none."""
    trailers: tuple[tuple[str, str | bytes], ...] = ()
    if isinstance(exc, grpc.Call):
        trailers = tuple(exc.trailing_metadata() or ())
    for key, value in trailers:
        if key != RETRY_AFTER_METADATA:
            continue
        try:
            millis = float(value)
        except (TypeError, ValueError):
            return 0.0
        if not math.isfinite(millis) or millis <= 0:
            return 0.0
        return min(millis / 1000.0, MAX_RETRY_AFTER)
    return 0.0


def _state(value: agent_pb2.InstanceState.ValueType) -> InstanceState:
    return _STATE.get(value, InstanceState.UNSPECIFIED)


class GrpcTransport:
    """Delivers reports to ``AgentService`` at ``target`` (HOST:PORT)."""

    def __init__(
        self,
        target: str,
        *,
        deadline: float,
        agent_version: str,
        tls: TlsFiles | None = None,
    ) -> None:
        self._deadline = deadline
        options = channel_options(deadline=deadline, agent_version=agent_version)
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._target = target

    def deliver(self, report: PendingReport) -> Delivery:
        """Send ``report``; see the module docstring for what each outcome raises."""
        try:
            if report.evidence is None:
                response = self._stub.Report(report_request(report), timeout=self._deadline)
                return Delivery(
                    state=_state(response.state), evidence_wanted=response.evidence_wanted
                )
            drift = self._stub.ReportDrift(drift_request(report), timeout=self._deadline)
            return Delivery(state=_state(drift.state))
        except grpc.RpcError as exc:
            return self._failed(exc)

    def _failed(self, exc: grpc.RpcError) -> Delivery:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        message = f"controller {self._target}: {code.name}: {details}"
        if code in _RETRYABLE:
            delay = retry_after(exc) if code is grpc.StatusCode.RESOURCE_EXHAUSTED else 0.0
            raise RetryableError(message, delay=delay) from None
        raise ReportRejectedError(message, code=code.name) from None

    def close(self) -> None:
        self._channel.close()
