"""The controller's exception root, one subclass per outcome a caller must tell apart.

Each subclass maps to exactly one gRPC status code at the edge
(:mod:`controller.api.convert`), so the domain and the store never import grpc and
the operator still gets a precise code and a message that says what to do.
"""

from __future__ import annotations

INTERNAL_DETAILS = "internal error: the controller logged the details; retrying may help"
"""The whole message a call that failed on a bug ends with (INTERNAL): nothing of the
exception goes on the wire."""


class ControllerError(Exception):
    """Base of every error the controller raises on purpose.

    ``reason`` is a short, bounded word (``stale``, ``undeclared_group`` …) that
    metrics may use as a label; the message is for people.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or type(self).__name__.lower()


class NotFoundError(ControllerError):
    """The named image, group or instance does not exist (NOT_FOUND)."""


class AlreadyExistsError(ControllerError):
    """Something different already exists under that name or digest (ALREADY_EXISTS)."""


class InvalidArgumentError(ControllerError):
    """The request itself is malformed (INVALID_ARGUMENT)."""


class FailedPreconditionError(ControllerError):
    """The request is well formed but the current state refuses it (FAILED_PRECONDITION)."""


class ConflictError(ControllerError):
    """A compare-and-set write lost a race: the stored row changed since it was read (ABORTED).

    Nothing was written. The caller reads again and decides again (a report), or
    leaves the row to whoever changed it (a sweep).
    """


class PermissionDeniedError(ControllerError):
    """The caller may not do this (PERMISSION_DENIED)."""


class ResourceExhaustedError(ControllerError):
    """A size or rate bound was exceeded (RESOURCE_EXHAUSTED)."""


class UnavailableError(ControllerError):
    """A service the controller needs (its database) is unreachable for now; retry (UNAVAILABLE)."""


class ConfigError(ControllerError):
    """The controller's configuration (file, environment or flags) is invalid."""


class StoreRefusedError(ControllerError):
    """The store is missing, empty, damaged or in use: refused at start, never served."""
