"""Where a served call becomes a status code: one rule for every RPC (docs/api.md).

- A request that does not decode is handed to the servicer as :data:`UNDECODABLE`
  (the deserializers here never raise, so gRPC never answers for us): it ends
  INVALID_ARGUMENT with one log line, counted, after the security interceptor
  has authenticated and rate-limited the caller like any other call.
- A :class:`~controller.errors.ControllerError` ends with its status code
  (:func:`controller.api.convert.status_of`) and its message, bounded in length.
  UNAVAILABLE (the store cannot be reached for now) also carries a
  ``retry-after-ms`` trailer.
- Anything else is a bug: INTERNAL with a generic message (no exception class
  or text on the wire), logged once with its traceback, counted.

``UNKNOWN`` is never returned on purpose. Every call is counted in
``corral_grpc_requests_total`` with the code it really returned
(:mod:`controller.api.counting`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from controller.api.convert import status_of
from controller.api.counting import Counted, MethodCounter
from controller.errors import INTERNAL_DETAILS, ControllerError
from controller.security.interceptor import RETRY_AFTER_METADATA

log = logging.getLogger("corral.controller")

Context = grpc.aio.ServicerContext[Any, Any]
#: What UNAVAILABLE asks a client to wait before retrying.
UNAVAILABLE_RETRY_MS = 1000
#: The longest status message sent; longer ones are cut.
MAX_DETAILS = 1024


class Undecodable:
    """Stands in for a request whose bytes are not a valid message of its type."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def lenient_deserializer(message_class: type[Message]) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that returns :class:`Undecodable` instead of raising."""
    parse = message_class.FromString
    undecodable = Undecodable(message_class.DESCRIPTOR.full_name)

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, recursion limits: all the client's fault
            return undecodable

    return deserialize


def add_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve ``servicer``'s methods for ``service`` with lenient request deserializers.

    Replaces the generated ``add_*Servicer_to_server``, whose deserializers raise
    (gRPC would then answer UNKNOWN with an exception name, uncounted).
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        request = lenient_deserializer(GetMessageClass(method.input_type))
        response = GetMessageClass(method.output_type).SerializeToString
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[method.client_streaming, method.server_streaming]
        handlers[method.name] = make(
            behavior, request_deserializer=request, response_serializer=response
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def details(message: str) -> str:
    """``message`` cut to :data:`MAX_DETAILS` characters."""
    return message if len(message) <= MAX_DETAILS else f"{message[: MAX_DETAILS - 3]}..."


async def refuse(calls: MethodCounter, error: ControllerError, context: Context) -> NoReturn:
    """End the call with ``error``'s status code (counted)."""
    code = status_of(error)
    calls.finished(code)
    trailers: tuple[tuple[str, str], ...] = ()
    if code is grpc.StatusCode.UNAVAILABLE:
        trailers = ((RETRY_AFTER_METADATA, str(UNAVAILABLE_RETRY_MS)),)
        log.warning("%s unavailable: %s", calls.method, error)
    await context.abort(code, details(str(error)), trailing_metadata=trailers)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def undecodable(calls: MethodCounter, request: Undecodable, context: Context) -> NoReturn:
    """End a call whose request did not decode: INVALID_ARGUMENT, one log line, counted."""
    log.warning("undecodable request refused", extra={"method": calls.method})
    calls.finished(grpc.StatusCode.INVALID_ARGUMENT)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request: the bytes are not a valid {request.type_name} message",
    )
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def internal(calls: MethodCounter, context: Context) -> NoReturn:
    """End a call that failed unexpectedly: INTERNAL, traceback logged once, counted."""
    log.exception("%s failed unexpectedly", calls.method)
    calls.finished(grpc.StatusCode.INTERNAL)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def failed(calls: MethodCounter, error: BaseException, context: Context) -> NoReturn:
    """End a call whose method raised ``error`` (called in its ``except`` block), counted.

    A ControllerError is refused with its status; an abort the method made
    itself and a cancellation are counted and go on; anything else is a bug:
    INTERNAL. Whatever is not an Exception (GeneratorExit, KeyboardInterrupt)
    goes on uncounted.
    """
    if isinstance(error, ControllerError):
        await refuse(calls, error, context)
    if isinstance(error, grpc.aio.AbortError):
        calls.finished(context.code())
    elif isinstance(error, asyncio.CancelledError):
        calls.finished(grpc.StatusCode.CANCELLED)
    elif isinstance(error, Exception):
        await internal(calls, context)
    raise error


Servicer = TypeVar("Servicer", bound=Counted)
Request = TypeVar("Request")
Response = TypeVar("Response")


def served(
    method: str,
) -> Callable[
    [Callable[[Servicer, Request, Context], Awaitable[Response]]],
    Callable[[Servicer, Request, Context], Awaitable[Response]],
]:
    """Decorate a unary-response servicer method with the rule of this module.

    The method may simply raise ControllerError; an undecodable unary request
    never reaches it (a streaming one arrives as :class:`Undecodable` items, which
    the method refuses by raising InvalidArgumentError).
    """

    def decorate(
        behavior: Callable[[Servicer, Request, Context], Awaitable[Response]],
    ) -> Callable[[Servicer, Request, Context], Awaitable[Response]]:
        @functools.wraps(behavior)
        async def call(self: Servicer, request: Request, context: Context) -> Response:
            calls = self._calls[method]
            if isinstance(request, Undecodable):
                await undecodable(calls, request, context)
            try:
                response = await behavior(self, request, context)
            except BaseException as exc:
                await failed(calls, exc, context)
            calls.ok.inc()
            return response

        return call

    return decorate


def served_stream(
    method: str,
) -> Callable[
    [Callable[[Servicer, Request, Context], AsyncIterator[Response]]],
    Callable[[Servicer, Request, Context], AsyncIterator[Response]],
]:
    """:func:`served` for a server-streaming method (an async generator)."""

    def decorate(
        behavior: Callable[[Servicer, Request, Context], AsyncIterator[Response]],
    ) -> Callable[[Servicer, Request, Context], AsyncIterator[Response]]:
        @functools.wraps(behavior)
        async def call(
            self: Servicer, request: Request, context: Context
        ) -> AsyncIterator[Response]:
            calls = self._calls[method]
            if isinstance(request, Undecodable):
                await undecodable(calls, request, context)
            try:
                async for response in behavior(self, request, context):
                    yield response
            except BaseException as exc:
                await failed(calls, exc, context)
            calls.ok.inc()

        return call

    return decorate
