"""Why the audit log refuses something, so callers catch audit failures and nothing else.

``AuditError`` is the root of the audit package, under the controller's
``ControllerError`` so one ``except ControllerError`` at the edge catches it.
"""

from __future__ import annotations

from controller.errors import ControllerError


class AuditError(ControllerError):
    """Base of every error the audit package raises on purpose."""


class InvalidEventError(AuditError):
    """An event cannot be recorded: a field is missing, too large or not canonical JSON."""


class CheckpointError(AuditError):
    """A checkpoint is unknown, unsigned when a signature is required, or cannot be pruned to."""


class ExportFormatError(AuditError):
    """An export file is not a corral audit export (bad header, bad JSON, wrong version)."""
