"""The gRPC edge of security: authenticate, rate-limit, authorize, then serve.

Every call's peer identity is read from its verified client certificate
(:mod:`.identity`); without one the call ends UNAUTHENTICATED. The identity's
token bucket is spent next (RESOURCE_EXHAUSTED with a ``retry-after-ms``
trailer when empty, so a caller refused for its role still cannot flood the
logs), then the role table decides (PERMISSION_DENIED). For agent reports the
interceptor also checks, on the decoded request, that ``header.instance_id`` is
the instance the certificate names, before any servicer code runs; a refused
call therefore changes nothing. Servicers and the audit log read the caller
with :func:`current_identity` / :func:`current_actor`. Refused calls never reach
a servicer, so the interceptor reports each refusal to ``on_refused`` (method,
status code); the server counts them in ``corral_grpc_requests_total``. A bug
while admitting a call ends it INTERNAL, counted the same way, never UNKNOWN.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc.aio import ServerInterceptor

from controller.errors import INTERNAL_DETAILS, ControllerError, PermissionDeniedError
from controller.security.authz import AGENT_RPCS, authorize, is_health, require_instance
from controller.security.caller import caller, current_actor, current_identity
from controller.security.errors import RateLimitedError
from controller.security.identity import (
    DEFAULT_TRUST_DOMAIN,
    Identity,
    Role,
    identity_from_auth_context,
)
from controller.security.ratelimit import RateLimiter

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

Context = grpc.aio.ServicerContext[Any, Any]
#: Told of every call the interceptor refuses: (full method name, status code).
OnRefused = Callable[[str, grpc.StatusCode], None]
RETRY_AFTER_METADATA = "retry-after-ms"

log = logging.getLogger("corral.security")

_HANDLER_KINDS: tuple[tuple[str, Callable[..., Handler], bool], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, True),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)
"""Each kind of method handler: its attribute, how to make one, whether requests stream."""

__all__ = ["SecurityInterceptor", "current_actor", "current_identity", "require_instance"]


class SecurityInterceptor(ServerInterceptor):
    """Wraps every served method with the identity, rate and role checks."""

    def __init__(
        self,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        limiters: Mapping[Role, RateLimiter] | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._trust_domain = trust_domain
        self._limiters = dict(limiters or {})
        self._on_refused = on_refused
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # not served: gRPC answers UNIMPLEMENTED, nothing to protect
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(method, handler)
            self._wrapped[method] = wrapped
        return wrapped

    async def admit(self, method: str, request: Any, context: Context) -> Identity:
        """The caller's identity if it may make this call; otherwise abort the call.

        A failure that is not a refusal is a bug: the call ends INTERNAL with a
        generic message, counted and logged with its traceback, as the servicers'
        edge ends theirs (gRPC itself would answer UNKNOWN with the exception's text).
        """
        try:
            return await self._admit(method, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("admitting a call to %s failed unexpectedly", method)
            self._refused(method, grpc.StatusCode.INTERNAL)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
            raise AssertionError("unreachable: abort raises") from None  # pragma: no cover

    async def _admit(self, method: str, request: Any, context: Context) -> Identity:
        identity = identity_from_auth_context(
            context.auth_context(), trust_domain=self._trust_domain
        )
        if identity is None:
            log.warning("unauthenticated call refused", extra={"method": method})
            self._refused(method, grpc.StatusCode.UNAUTHENTICATED)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate naming a corral identity "
                f"(spiffe://{self._trust_domain}/<role>/<name>) is required",
            )
        try:
            limiter = None if is_health(method) else self._limiters.get(identity.role)
            if limiter is not None:
                limiter.acquire(identity.actor)
            authorize(identity, method)
            instance_id = _instance_of(request) if method in AGENT_RPCS else ""
            if instance_id:  # a report without one is the servicer's INVALID_ARGUMENT
                require_instance(identity, instance_id)
        except RateLimitedError as exc:
            self._refused(method, grpc.StatusCode.RESOURCE_EXHAUSTED)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                str(exc),
                trailing_metadata=((RETRY_AFTER_METADATA, str(math.ceil(exc.retry_after * 1000))),),
            )
        except PermissionDeniedError as exc:
            log.warning(
                "call refused",
                extra={"method": method, "actor": identity.actor, "reason": exc.reason},
            )
            self._refused(method, grpc.StatusCode.PERMISSION_DENIED)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return identity

    def _refused(self, method: str, code: grpc.StatusCode) -> None:
        if self._on_refused is not None:
            self._on_refused(method, code)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        for kind, make, streaming_request in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    self._guard(method, behavior, streaming_request=streaming_request),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return _refuse_all(handler)  # pragma: no cover - gRPC has no fifth kind

    def _guard(
        self, method: str, behavior: Callable[..., Any], *, streaming_request: bool
    ) -> Callable[..., Any]:
        """``behavior`` run only after :meth:`admit`, with the identity in the context."""

        def first(request: Any) -> Any:
            return None if streaming_request else request

        if inspect.isasyncgenfunction(behavior):

            async def generate(request: Any, context: Context) -> AsyncIterator[Any]:
                identity = await self.admit(method, first(request), context)
                token = caller.set(identity)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    caller.reset(token)

            return generate

        async def call(request: Any, context: Context) -> Any:
            identity = await self.admit(method, first(request), context)
            token = caller.set(identity)
            try:
                return await behavior(request, context)
            finally:
                caller.reset(token)

        return call


def _instance_of(request: Any) -> str:
    """``request.header.instance_id`` of an agent report ("" when absent)."""
    header = getattr(request, "header", None)
    instance_id = getattr(header, "instance_id", "")
    return instance_id if isinstance(instance_id, str) else ""


def _refuse_all(handler: Handler) -> NoReturn:
    raise ControllerError(f"cannot protect a gRPC handler of unknown kind: {handler!r}")
