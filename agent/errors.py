"""The agent's exception root, so callers catch corral's failures and nothing else."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ManifestError(AgentError):
    """A manifest file is malformed, from an unknown format version, or corrupt."""


class PolicyError(AgentError):
    """A policy file or pattern is invalid."""


class RetryableError(AgentError):
    """A failure worth retrying after ``delay`` seconds (e.g. the controller is down).

    ``code`` names the gRPC status when the controller answered one.
    """

    def __init__(self, message: str, *, delay: float, code: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.delay = delay
        self.code = code


class ReportRejectedError(AgentError):
    """The controller refused a report; ``code`` names why (e.g. ``INVALID_ARGUMENT``)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
