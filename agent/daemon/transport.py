"""The agent's gRPC edge: reports in, ``AgentService`` calls out, statuses mapped back.

This is the only agent module that imports grpc or the ``agent_pb2`` messages.
It converts the domain report (:mod:`agent.daemon.report`) to protobuf, calls the
controller with a deadline on every call, lets the channel retry
``UNAVAILABLE`` (connection refused, server restarting) a few times on its
own, and maps what still fails to the agent's errors. The rule: a report is
dropped only when the controller *judged that report* and refused it;
anything that says the controller (or the path to it) could not judge it
keeps the report.

Definitive refusals → :class:`ReportRejectedError` (dropped, counted, logged):

- ``INVALID_ARGUMENT``, ``OUT_OF_RANGE``: the report is malformed or out of
  range; the same bytes will be refused again;
- ``FAILED_PRECONDITION``: an undeclared group, a stale ``seq``, a retired
  instance: the controller's state rules this report out;
- ``ALREADY_EXISTS``: the ``seq`` was already used with a different root;
- ``PERMISSION_DENIED``: this caller may not report for this instance;
- ``NOT_FOUND``: the controller does not know what the report refers to.

Retryable → :class:`RetryableError` (kept, backed off, retried):

- ``UNAVAILABLE`` (down, restarting, storage fault), ``DEADLINE_EXCEEDED``,
  ``RESOURCE_EXHAUSTED`` (rate limited), ``ABORTED`` (a lost race),
  ``CANCELLED`` (the agent is stopping);
- ``UNKNOWN``, ``INTERNAL``, ``DATA_LOSS``: a controller fault, not a verdict
  on the report;
- ``UNIMPLEMENTED``: the address answers but does not serve ``AgentService``
  (a controller being upgraded, a wrong port): nothing judged the report;
- ``UNAUTHENTICATED``: the caller could not be identified (a client
  certificate being rotated); after the operator fixes it and restarts the
  agent, the kept reports are delivered.

A retry waits at least the ``retry-after-ms`` trailer the controller sent
(with any retryable code), up to :data:`MAX_RETRY_AFTER`.

**Reconnecting.** gRPC's own reconnect backoff (by default up to 120 s) is
bounded by ``reconnect_cap`` (the agent's retry cap), so after an outage the
channel tries again at least as often as the agent does. And after a call
failed with ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` the next delivery opens
a fresh channel, which connects at once instead of waiting for the old
channel's backoff: an agent reports again at its first retry after the
controller is back.

Keepalive pings every 60 s while a call is open (the controller must allow
``grpc.http2.min_ping_interval_without_data_ms`` ≤ 60 000).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass

import grpc

from agent.daemon.report import Delivery, InstanceState, PendingReport
from agent.errors import AgentError, ReportRejectedError, RetryableError
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import entry_to_proto
from agent.manifest.report import Report
from protos.corral.v1 import agent_pb2, agent_pb2_grpc, manifest_pb2

SERVICE = "corral.v1.AgentService"
RETRY_AFTER_METADATA = "retry-after-ms"
#: A controller's retry hint is honoured up to this many seconds.
MAX_RETRY_AFTER = 3600.0
MAX_SEND_BYTES = 4 << 20
MAX_RECEIVE_BYTES = 1 << 20

#: Codes that refuse the report itself: resending the same report cannot help.
DEFINITIVE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    }
)
#: After these, the next delivery opens a fresh channel (see the module docstring).
_RECONNECT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: The first reconnect attempt after a connection is lost, in milliseconds.
INITIAL_RECONNECT_MS = 1000
#: The channel's longest reconnect backoff when the caller names none, in seconds.
DEFAULT_RECONNECT_CAP = 60.0
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


def is_definitive(code: grpc.StatusCode) -> bool:
    """True when ``code`` refuses the report itself (drop it); False: keep and retry."""
    return code in DEFINITIVE


def channel_options(
    *, deadline: float, agent_version: str, reconnect_cap: float
) -> list[tuple[str, str | int]]:
    """The channel's settings; its reconnect backoff never exceeds ``reconnect_cap`` seconds."""
    cap_ms = max(1, int(reconnect_cap * 1000))
    return [
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", min(INITIAL_RECONNECT_MS, cap_ms)),
        # Also the shortest time a connection attempt is given: at least the call deadline.
        ("grpc.min_reconnect_backoff_ms", min(max(int(deadline * 1000), 1), cap_ms)),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
        ("grpc.service_config", service_config(deadline=deadline)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.primary_user_agent", f"corral-agent/{agent_version}"),
    ]


def header_to_proto(header: Report) -> agent_pb2.ReportHeader:
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
        reconnect_cap: float = DEFAULT_RECONNECT_CAP,
        tls: TlsFiles | None = None,
    ) -> None:
        self._deadline = deadline
        self._options = channel_options(
            deadline=deadline, agent_version=agent_version, reconnect_cap=reconnect_cap
        )
        self._credentials = None if tls is None else tls.credentials()
        self._target = target
        self._lock = threading.Lock()
        self._closed = False
        self._fresh_channel_due = False
        self._channel, self._stub = self._open()

    def _open(self) -> tuple[grpc.Channel, agent_pb2_grpc.AgentServiceStub]:
        if self._credentials is None:
            channel = grpc.insecure_channel(self._target, options=self._options)
        else:
            channel = grpc.secure_channel(self._target, self._credentials, options=self._options)
        return channel, agent_pb2_grpc.AgentServiceStub(channel)

    def _current_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        with self._lock:
            if self._closed:
                raise RetryableError(f"controller {self._target}: transport closed", delay=0.0)
            if self._fresh_channel_due:
                self._fresh_channel_due = False
                old = self._channel
                self._channel, self._stub = self._open()
                old.close()
            return self._stub

    def deliver(self, report: PendingReport) -> Delivery:
        """Send ``report``; see the module docstring for what each outcome raises."""
        # Built before the call: a report that cannot be encoded is a bug, not an outage.
        steady: agent_pb2.ReportRequest | None = None
        with_evidence: agent_pb2.ReportDriftRequest | None = None
        if report.evidence is None:
            steady = report_request(report)
        else:
            with_evidence = drift_request(report)
        stub = self._current_stub()
        try:
            if with_evidence is not None:
                drift = stub.ReportDrift(with_evidence, timeout=self._deadline)
                return Delivery(state=_state(drift.state))
            assert steady is not None
            response = stub.Report(steady, timeout=self._deadline)
            return Delivery(state=_state(response.state), evidence_wanted=response.evidence_wanted)
        except grpc.RpcError as exc:
            return self._failed(exc)
        except ValueError as exc:  # the channel was closed under the call (stopping)
            raise RetryableError(f"controller {self._target}: {exc}", delay=0.0) from None

    def _failed(self, exc: grpc.RpcError) -> Delivery:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        message = f"controller {self._target}: {code.name}: {details}"
        if is_definitive(code):
            raise ReportRejectedError(message, code=code.name) from None
        if code in _RECONNECT:
            with self._lock:
                self._fresh_channel_due = True
        raise RetryableError(message, delay=retry_after(exc), code=code.name) from None

    def close(self) -> None:
        """Close the channel; a call in flight ends with ``CANCELLED`` (kept, retryable)."""
        with self._lock:
            self._closed = True
            self._channel.close()
