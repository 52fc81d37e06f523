"""What an agent says about its root: the report's header, its footprint, drift evidence.

One model for both ends: the agent builds these (:mod:`agent.daemon.report`), the
controller decides on them (:mod:`controller.domain.drift`); only the transports
convert them to and from ``corral.v1`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.manifest.diff import Change


@dataclass(frozen=True, slots=True)
class Footprint:
    """The agent's own resource use when the report was made."""

    rss_bytes: int = 0
    cpu_millis: int = 0


@dataclass(frozen=True, slots=True)
class Report:
    """The constant-size part of every report (``corral.v1.ReportHeader`` on the wire)."""

    instance_id: str
    group: str
    image_ref: str
    image_digest: str
    root: bytes
    seq: int
    boot_id: str
    scanned_at_ms: int
    footprint: Footprint = Footprint()
    agent_version: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The changes against the baseline manifest, possibly truncated."""

    changes: tuple[Change, ...]
    truncated: bool = False
    total_changes: int = 0
