"""Pieces every adapter shares when it writes: time clamping and the checkpoint record.

Kept apart from ``chain`` (which only checks) and ``queries`` (which only reads).
"""

from __future__ import annotations

from dataclasses import replace

from controller.audit.chain import Position
from controller.audit.queries import FleetReplay
from controller.audit.record import Event, EventKind


def clamp(event: Event, head_ms: int) -> Event:
    """The event at no earlier a time than the head, so record times never go back."""
    return event if event.at_ms >= head_ms else replace(event, at_ms=head_ms)


def checkpoint_event(head: Position, state: FleetReplay, *, at_ms: int, actor: str) -> Event:
    """A checkpoint committing to ``head`` and carrying the fleet as of ``head``."""
    return Event(
        kind=EventKind.CHECKPOINT,
        at_ms=at_ms,
        actor=actor,
        reason=f"checkpoint after record {head.seq}",
        data={"covers": {"seq": head.seq, "hash": head.hash}, "snapshot": state.snapshot()},
    )
