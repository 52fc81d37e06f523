"""The security package's refusals, each a :class:`ControllerError` with one status code.

``PermissionDeniedError`` and ``ResourceExhaustedError`` come from
:mod:`controller.errors` so :func:`controller.api.convert.status_of` maps them
already; ``UnauthenticatedError`` is new here and maps to UNAUTHENTICATED.
"""

from __future__ import annotations

from controller.errors import ControllerError, ResourceExhaustedError


class SecurityError(ControllerError):
    """Base of the errors raised by :mod:`controller.security`."""


class UnauthenticatedError(SecurityError):
    """The caller presented no identity corral recognises (UNAUTHENTICATED)."""


class CertificateError(SecurityError):
    """A CA or certificate cannot be created, read or used as asked."""


class RateLimitedError(ResourceExhaustedError):
    """The caller spent its token bucket; ``retry_after`` says when to come back."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, reason="rate_limited")
        self.retry_after = retry_after
