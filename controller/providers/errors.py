"""Provider failures, split by what the replacement engine should do next.

A provider call either succeeds, fails in a way worth retrying later (the
engine backs off for at least ``delay`` seconds), or fails for good (the
replacement is marked failed and an operator is told). Both derive from
:class:`~controller.errors.ControllerError`, so callers never import an SDK's
exceptions: each adapter maps its SDK's errors at its own edge.
"""

from __future__ import annotations

from controller.errors import ControllerError


class ProviderError(ControllerError):
    """A provider could not do what was asked."""


class TemporaryProviderError(ProviderError):
    """Worth retrying after ``delay`` seconds: the engine is down, a call timed out, throttling."""

    def __init__(self, message: str, *, delay: float, reason: str = "") -> None:
        super().__init__(message, reason=reason or "provider_temporary")
        self.delay = delay


class PermanentProviderError(ProviderError):
    """Retrying cannot help: unknown image, bad configuration, refused by the platform."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message, reason=reason or "provider_permanent")
