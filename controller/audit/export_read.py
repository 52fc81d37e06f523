"""Read an audit export back: its record lines as rows, its trailer's checkpoints.

``export.verify_export`` says whether the file can be trusted and reads it
with the helpers here; a report made offline takes the record lines as rows
(``row.Row``, ``data`` decoded) streaming, so a large export is held one line
at a time, and the trailer is read from the end of the file without
reading the records again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from controller.audit.chain import Checkpoint
from controller.audit.errors import AuditError, ExportFormatError
from controller.audit.row import Row

_CHUNK = 64 * 1024
_decode = json.JSONDecoder().decode


@dataclass(frozen=True, slots=True)
class ExportTrailer:
    """The export's last line: its checkpoints and the digest that seals the file."""

    checkpoints: tuple[Checkpoint, ...]
    file_sha256: str | None


def export_rows(path: Path) -> Iterator[Row]:
    """Every record line of the export at ``path`` as a row, in file order.

    Raises AuditError when the file cannot be read or a line is not a record.
    """
    try:
        with path.open("rb") as stream:
            next(stream, None)  # the header
            for number, line in enumerate(stream, start=2):
                value = parse_object(f"line {number}", line)
                if "end" in value:
                    return
                yield line_row(number, value)
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from error


def export_trailer(path: Path) -> ExportTrailer:
    """The checkpoints and file digest from the export's trailer line."""
    try:
        with path.open("rb") as stream:
            last = last_line(stream)
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from error
    trailer = parse_object("the last line", last)
    end = trailer.get("end")
    if not isinstance(end, dict):
        raise ExportFormatError(f"{path} does not end with an export trailer")
    digest = trailer.get("file_sha256")
    return ExportTrailer(trailer_checkpoints(end), digest if isinstance(digest, str) else None)


def last_line(stream: IO[bytes]) -> bytes:
    """The stream's last line (with its newline, if it has one), read from the end."""
    position = stream.seek(0, os.SEEK_END)
    tail = b""
    while position > 0:
        step = min(_CHUNK, position)
        position -= step
        stream.seek(position)
        tail = stream.read(step) + tail
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return tail[cut + 1 :]
    return tail


def trailer_checkpoints(end: dict[str, Any]) -> tuple[Checkpoint, ...]:
    """The checkpoints a trailer's ``end`` object lists; raises ExportFormatError if malformed."""
    try:
        return tuple(Checkpoint(**c) for c in end.get("checkpoints", []))
    except TypeError as error:
        raise ExportFormatError(f"the trailer's checkpoints are malformed: {error}") from error


def parse_object(where: str, line: bytes) -> dict[str, Any]:
    """The JSON object on one line; raises ExportFormatError naming ``where`` otherwise."""
    try:
        value = _decode(line.decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError is one
        raise ExportFormatError(f"{where} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ExportFormatError(f"{where} is not a JSON object")
    return value


_FIELDS = itemgetter(
    "seq", "at_ms", "kind", "actor", "reason", "instance", "related", "group", "image", "data",
    "prev", "hash",
)  # fmt: skip
"""An export line's fields in row order (``row.Row``)."""


def line_row(number: int, value: dict[str, Any]) -> Row:
    """The record on line ``number`` (parsed) as a row; raises ExportFormatError if it is none."""
    try:
        row: Row = _FIELDS(value)
    except KeyError as error:
        raise ExportFormatError(f"line {number} is not an audit record: no {error}") from error
    seq, at_ms, data = row[0], row[1], row[9]
    if type(seq) is not int or type(at_ms) is not int or not isinstance(data, dict):
        raise ExportFormatError(f"line {number} is not an audit record: a field has a bad type")
    return row
