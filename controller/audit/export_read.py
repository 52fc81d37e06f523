"""Read the records of an audit export back, for reports made offline from the file.

``export.verify_export`` says whether the file can be trusted; this module
only turns its record lines back into :class:`Record` values (and its trailer
into checkpoints), streaming, so a report over a large export holds one line
at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.audit.chain import Checkpoint
from controller.audit.errors import AuditError, ExportFormatError
from controller.audit.record import EventKind, Record, trusted_event


@dataclass(frozen=True, slots=True)
class ExportTrailer:
    """The export's last line: its checkpoints and the digest that seals the file."""

    checkpoints: tuple[Checkpoint, ...]
    file_sha256: str | None


def export_records(path: Path) -> Iterator[Record]:
    """Every record line of the export at ``path``, in file order.

    Raises AuditError when the file cannot be read or a line is not a record.
    """
    try:
        with path.open("rb") as stream:
            next(stream, None)  # the header
            for number, line in enumerate(stream, start=2):
                value = _object(number, line)
                if "end" in value:
                    return
                yield _record(number, value)
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from error


def export_trailer(path: Path) -> ExportTrailer:
    """The checkpoints and file digest from the export's trailer line."""
    try:
        with path.open("rb") as stream:
            last = b""
            for line in stream:
                last = line
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from error
    trailer = _object(0, last)
    end = trailer.get("end")
    if not isinstance(end, dict):
        raise ExportFormatError(f"{path} does not end with an export trailer")
    try:
        checkpoints = tuple(Checkpoint(**c) for c in end.get("checkpoints", []))
    except TypeError as error:
        raise ExportFormatError(f"the trailer's checkpoints are malformed: {error}") from error
    digest = trailer.get("file_sha256")
    return ExportTrailer(checkpoints, digest if isinstance(digest, str) else None)


def _object(number: int, line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as error:
        raise ExportFormatError(f"line {number} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ExportFormatError(f"line {number} is not a JSON object")
    return value


def _record(number: int, value: dict[str, Any]) -> Record:
    try:
        event = trusted_event(
            kind=EventKind(value["kind"]),
            at_ms=int(value["at_ms"]),
            actor=str(value["actor"]),
            reason=str(value["reason"]),
            instance_id=value["instance"],
            related_instance_id=value["related"],
            group=value["group"],
            image=value["image"],
            data=dict(value["data"]),
        )
        return Record(int(value["seq"]), str(value["prev"]), str(value["hash"]), event)
    except (KeyError, TypeError, ValueError) as error:
        raise ExportFormatError(f"line {number} is not an audit record: {error}") from error
