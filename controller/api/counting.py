"""Counts served RPCs by method and status code (``corral_grpc_requests_total``).

The servicers count their own calls instead of a generic server interceptor: an
interceptor adds coroutines and a handler lookup to every call, which the agent
report path cannot afford. Label children are created once per (method, code)
and cached, so counting costs one dict lookup and one increment. Only methods
the servicers implement are counted, so a client probing random method names
cannot grow the label set. Calls the security interceptor refuses never reach a
servicer; :class:`RefusalCounter` counts those under the same metric.
:mod:`controller.api.edge` decides the code each served call ends with.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from prometheus_client import Counter

OK = grpc.StatusCode.OK.name


class _Child(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class MethodCounter:
    """The counter children of one RPC method, made on first use."""

    __slots__ = ("_by_code", "_counter", "method", "ok")

    def __init__(self, counter: Counter, method: str) -> None:
        self._counter = counter
        self.method = method
        self.ok: _Child = counter.labels(method=method, code=OK)
        self._by_code: dict[str, _Child] = {OK: self.ok}

    def finished(self, code: object) -> None:
        """Count one call that ended with ``code`` (a StatusCode, or None for OK)."""
        name = _name(code)
        child = self._by_code.get(name)
        if child is None:
            child = self._by_code[name] = self._counter.labels(method=self.method, code=name)
        child.inc()


def _name(code: object) -> str:
    if code is None:
        return OK
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.UNKNOWN.name


class Counted(Protocol):
    """A servicer that counts its calls: ``_calls`` maps full method names to counters."""

    _calls: dict[str, MethodCounter]


def method_counters(
    counter: Counter, service: str, names: tuple[str, ...]
) -> dict[str, MethodCounter]:
    """One :class:`MethodCounter` per RPC of ``service`` (full names ``/service/Name``)."""
    full = (f"/{service}/{name}" for name in names)
    return {method: MethodCounter(counter, method) for method in full}


class RefusalCounter:
    """Counts calls refused before any servicer ran (``on_refused`` of the security interceptor).

    The interceptor only wraps methods the server serves, so the label set stays
    bounded by the served methods and the refusal codes.
    """

    __slots__ = ("_by_key", "_counter")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._by_key: dict[tuple[str, grpc.StatusCode], _Child] = {}

    def __call__(self, method: str, code: grpc.StatusCode) -> None:
        child = self._by_key.get((method, code))
        if child is None:
            child = self._counter.labels(method=method, code=code.name)
            self._by_key[method, code] = child
        child.inc()
