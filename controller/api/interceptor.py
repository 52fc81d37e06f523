"""Counts every served RPC by method and status code (``corral_grpc_requests_total``).

Only methods the server actually serves are counted, so a client probing random
method names cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc.aio import ServerInterceptor

from controller.metrics import ControllerMetrics

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler


class MetricsInterceptor(ServerInterceptor):
    """Wraps unary and client-streaming handlers to count their outcome."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrap(method, handler)
            self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        counter = self._metrics.grpc_requests
        ok = counter.labels(method=method, code=grpc.StatusCode.OK.name)

        def counted(behavior: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    response = await behavior(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    counter.labels(method=method, code=_name(code)).inc()
                    raise
                code = context.code()
                if code is None or code == grpc.StatusCode.OK:
                    ok.inc()
                else:
                    counter.labels(method=method, code=_name(code)).inc()
                return response

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                counted(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                counted(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # streaming responses (health Watch) are not counted


def _name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)
