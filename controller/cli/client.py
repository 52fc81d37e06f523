"""The operator CLI's gRPC client: deadlines always, retries on UNAVAILABLE, clear exits.

Every call passes ``timeout=``; the channel's service config retries UNAVAILABLE
with backoff; a failed call becomes :class:`ClientError`, whose ``exit_code``
follows the CLI contract: 2 bad input, 1 refused, 69 controller unavailable.

With ``--tls-ca/--tls-cert/--tls-key`` (or ``CORRAL_CLIENT_TLS_CA_FILE``,
``CORRAL_CLIENT_TLS_CERT_FILE``, ``CORRAL_CLIENT_TLS_KEY_FILE``: distinct from the
controller's own ``CORRAL_TLS_*``, so a CLI run in the controller's environment never
presents the server's identity) the channel is mutual TLS
and the controller names the caller from the certificate; unusable files exit
2 before anything is sent. A refused handshake surfaces as UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from controller.security.errors import CertificateError
from controller.security.tls import TlsFiles, channel_credentials
from protos.corral.v1 import fleet_pb2_grpc

DEFAULT_CONTROLLER = "127.0.0.1:7070"
DEFAULT_TIMEOUT = 10.0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69

_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "corral.v1.FleetService"}],
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
_USAGE_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

Response = TypeVar("Response")


class ClientError(Exception):
    """A call that failed, with the exit code the CLI should return."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_controller_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller",
        metavar="HOST:PORT",
        help=f"controller address (default: $CORRAL_CONTROLLER or {DEFAULT_CONTROLLER})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for each call"
    )
    for flag, name, what in (
        ("--tls-ca", "CA", "CA bundle the controller's certificate chains to"),
        ("--tls-cert", "CERT", "your certificate chain (mutual TLS)"),
        ("--tls-key", "KEY", "your private key (mutual TLS)"),
    ):
        parser.add_argument(
            flag, metavar="FILE", help=f"{what} (default: $CORRAL_CLIENT_TLS_{name}_FILE)"
        )


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files from flags, else the environment; None for plaintext.

    Raises CertificateError when only some of the three are given.
    """
    env = os.environ
    return TlsFiles.from_values(
        getattr(args, "tls_ca", None) or env.get("CORRAL_CLIENT_TLS_CA_FILE") or None,
        getattr(args, "tls_cert", None) or env.get("CORRAL_CLIENT_TLS_CERT_FILE") or None,
        getattr(args, "tls_key", None) or env.get("CORRAL_CLIENT_TLS_KEY_FILE") or None,
        source="--tls-ca/--tls-cert/--tls-key",
    )


def actor() -> str:
    """Who is running the command, recorded on registrations and manual taints."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class FleetClient:
    """A channel to the controller's FleetService."""

    def __init__(
        self, address: str, *, timeout: float = DEFAULT_TIMEOUT, tls: TlsFiles | None = None
    ) -> None:
        """Raises CertificateError when ``tls`` files cannot be read."""
        self.address = address
        self.timeout = timeout
        options = [("grpc.enable_retries", 1), ("grpc.service_config", _SERVICE_CONFIG)]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, channel_credentials(tls), options=options)
        self.stub = fleet_pb2_grpc.FleetServiceStub(self._channel)
        self._metadata = (("corral-actor", actor()),)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FleetClient:
        address = args.controller or os.environ.get("CORRAL_CONTROLLER") or DEFAULT_CONTROLLER
        return cls(address, timeout=args.timeout, tls=tls_from_args(args))

    def call(self, method: Callable[..., Response], request: Any) -> Response:
        """Call ``method`` (a stub attribute) with a deadline; raises ClientError."""
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def list_all(self, method: Callable[..., Any], request: Any, field: str) -> list[Any]:
        """Every item of a paged list RPC (AIP-158): follow ``next_page_token`` to the end.

        ``field`` names the repeated field of the response (``instances``).
        Raises ClientError.
        """
        items: list[Any] = []
        while True:
            response = self.call(method, request)
            items.extend(getattr(response, field))
            token = response.next_page_token
            if not token:
                return items
            request.page_token = token

    def stream(self, method: Callable[..., Response], requests: Iterator[Any]) -> Response:
        """A client-streaming call with a deadline; raises ClientError."""
        return self.call(method, requests)

    def close(self) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError) -> ClientError:
        code: grpc.StatusCode = exc.code()
        details: str = exc.details() or code.name
        if code in _UNAVAILABLE_CODES:
            return ClientError(
                f"controller {self.address} is unavailable ({code.name}): {details}",
                exit_code=EXIT_UNAVAILABLE,
            )
        exit_code = EXIT_USAGE if code in _USAGE_CODES else EXIT_REFUSED
        return ClientError(f"{code.name.lower()}: {details}", exit_code=exit_code)


def run_with_client(
    args: argparse.Namespace, action: Callable[[FleetClient, argparse.Namespace], int]
) -> int:
    """Run ``action`` with a client; print a ClientError and return its exit code."""
    try:
        client = FleetClient.from_args(args)
    except CertificateError as exc:
        print(f"corral {args.command}: TLS: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return action(client, args)
    except ClientError as exc:
        print(f"corral {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        client.close()


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
