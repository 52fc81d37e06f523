"""Export a stretch of the audit log as JSON Lines that an auditor verifies offline.

File layout, one canonical JSON object per line (sorted keys, no whitespace,
UTF-8, ``\\n`` after every line):

1. header ``{"corral_audit_export":1,"since_ms":..,"until_ms":..}``;
2. one line per record: its hashed body plus ``"hash"`` (see ``record``);
3. trailer ``{"end":{"count":..,"last_seq":..,"last_hash":..,"checkpoints":[..]},
   "file_sha256":..}`` where ``file_sha256`` covers every byte before the trailer
   plus the canonical ``end`` object.

Offline verification re-hashes every record, checks the links, the trailer and
that every line is exactly canonical, so any one-byte edit is caught. The first
record's ``prev`` cannot be checked from the file alone: compare it (or the
last hash) with an anchored checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from controller.audit.chain import (
    Checkpoint,
    Position,
    VerifyResult,
    verify_chain,
    verify_checkpoints,
)
from controller.audit.errors import AuditError, ExportFormatError, InvalidEventError
from controller.audit.export_read import last_line, line_row, parse_object, trailer_checkpoints
from controller.audit.ports import AuditLog
from controller.audit.record import canonical_json
from controller.audit.row import Row, row_text

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What was written: how many records, and the chain positions they span."""

    count: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None


def export_jsonl(
    log: AuditLog, out: Path, *, since_ms: int | None = None, until_ms: int | None = None
) -> ExportSummary:
    """Write records with ``since_ms <= at_ms <= until_ms`` to ``out``; return a summary."""
    header = {"corral_audit_export": FORMAT_VERSION, "since_ms": since_ms, "until_ms": until_ms}
    digest = hashlib.sha256()
    count, first, last = 0, None, None
    with out.open("wb") as stream:

        def write(line: bytes) -> None:
            stream.write(line + b"\n")
            digest.update(line + b"\n")

        write(canonical_json(header))
        for row in log.rows(since_ms=since_ms, until_ms=until_ms):
            write(row_text(row, with_hash=True).encode("utf-8"))
            count += 1
            first = first or Position(row[0], row[11])
            last = Position(row[0], row[11])
        checkpoints = [
            _checkpoint_json(c)
            for c in log.checkpoints()
            if first is not None and last is not None and first.seq <= c.seq <= last.seq
        ]
        end = {
            "count": count,
            "last_seq": last.seq if last else None,
            "last_hash": last.hash if last else None,
            "checkpoints": checkpoints,
        }
        digest.update(canonical_json(end))
        stream.write(canonical_json({"end": end, "file_sha256": digest.hexdigest()}) + b"\n")
    return ExportSummary(
        count, first.seq if first else None, last.seq if last else None, last.hash if last else None
    )


def verify_export(path: Path, *, key: bytes | None = None) -> VerifyResult:
    """Verify an export file offline; the result names the first bad record or line."""
    try:
        with path.open("rb") as stream:
            return verify_export_stream(stream, key=key)
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from error


def verify_export_bytes(data: bytes, *, key: bytes | None = None) -> VerifyResult:
    """Verify the bytes of an export (see ``verify_export``)."""
    return verify_export_stream(io.BytesIO(data), key=key)


def verify_export_stream(stream: IO[bytes], *, key: bytes | None = None) -> VerifyResult:
    """Verify an export read from ``stream`` (seekable), one record line at a time.

    Every line must be exactly canonical, every record re-hashes to its
    ``hash`` and links to the one before, the trailer's count, head and
    checkpoints match the records, and its digest covers every byte before it.
    """
    last = last_line(stream)
    trailer_at = stream.seek(0, io.SEEK_END) - len(last)
    stream.seek(0)
    header_line = stream.readline()
    if not last.endswith(b"\n") or trailer_at < len(header_line):
        return _bad(None, "the file is truncated or does not end with a newline")
    try:
        header, trailer = _parse("line 1", header_line), _parse("the last line", last)
    except ExportFormatError as error:
        return _bad(None, str(error))
    if header.get("corral_audit_export") != FORMAT_VERSION:
        return _bad(None, "line 1 is not a corral audit export header (version 1)")
    end = trailer.get("end")
    if not isinstance(end, dict):
        return _bad(None, "the last line is not the export trailer")
    try:
        checkpoints = trailer_checkpoints(end)
    except ExportFormatError:
        return _bad(None, "the trailer's checkpoints are malformed")
    last_seq, last_hash = end.get("last_seq"), end.get("last_hash")
    head = Position(last_seq, str(last_hash)) if isinstance(last_seq, int) else None
    lines = _RecordLines(stream, header_line, trailer_at, {c.seq for c in checkpoints})
    try:
        rows = lines.rows()
        first = next(rows, None)
        if first is None:
            result = verify_chain((), base=Position(0, ""), head=head)
        else:
            base = Position(first[0] - 1, first[10])
            result = verify_chain(itertools.chain((first,), rows), base=base, head=head)
    except ExportFormatError as error:
        return _bad(None, str(error))
    if not result.ok:
        return result
    if end.get("count") != lines.count:
        return _bad(
            None, f"the trailer counts {end.get('count')} records, the file has {lines.count}"
        )
    result = verify_checkpoints(result, checkpoints, lines.hashes, base=Position(0, ""), key=key)
    if not result.ok:
        return result
    lines.digest.update(canonical_json(end))
    if trailer.get("file_sha256") != lines.digest.hexdigest():
        return _bad(None, "the file's digest does not match its trailer: a line was edited")
    return result


class _RecordLines:
    """The record lines between the header and the trailer at ``end``, as verified rows.

    Keeps what the trailer is checked against once they are read: how many
    there were, the hashes of the records ``wanted`` (the checkpoints), and the
    digest of every byte before the trailer.
    """

    def __init__(self, stream: IO[bytes], header: bytes, end: int, wanted: set[int]) -> None:
        self.stream, self.at, self.end, self.wanted = stream, len(header), end, wanted
        self.digest = hashlib.sha256(header)
        self.count = 0
        self.hashes: dict[int, str] = {}

    def rows(self) -> Iterator[Row]:
        for number, line in enumerate(self.stream, start=2):
            self.at += len(line)
            if self.at > self.end:
                return
            self.digest.update(line)
            row = _record_row(number, line)
            self.count += 1
            if row[0] in self.wanted:
                self.hashes[row[0]] = row[11]
            yield row


def _refuse(text: str) -> None:
    raise ValueError(f"{text} is not canonical (integers only)")


_STRICT = json.JSONDecoder(parse_float=_refuse, parse_constant=_refuse).decode
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _record_row(number: int, line: bytes) -> Row:
    """The record on a line, with ``data`` as its exact text, checked to be canonical.

    The line is canonical when it equals the row's canonical text with the
    hash (top-level fields in order, nothing missing or extra) and its
    ``data`` text equals the canonical encoding of the data it holds. The
    data text sits between the first top-level ``,"data":`` and the last
    ``,"group":``: before it come only text and a number, after it only
    scalars, and no string holds an unescaped quote.
    """
    try:
        text = line[:-1].decode("utf-8")
        value = _STRICT(text)
    except ValueError as error:  # UnicodeDecodeError is one
        raise ExportFormatError(f"line {number} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ExportFormatError(f"line {number} is not a JSON object")
    row = line_row(number, value)
    data_text = text[text.find(',"data":') + 8 : text.rfind(',"group":')]
    row = (*row[:9], data_text, *row[10:])
    try:
        canonical = row_text(row, with_hash=True) == text and _ENCODE(value["data"]) == data_text
    except InvalidEventError as error:
        raise ExportFormatError(f"line {number} is not an audit record: {error}") from error
    if not canonical:
        raise ExportFormatError(f"line {number} is not in canonical form: it was edited")
    return row


def _parse(where: str, line: bytes) -> dict[str, Any]:
    """A header or trailer line, which must be exactly canonical."""
    value = parse_object(where, line)
    try:
        canonical = canonical_json(value)
    except AuditError as error:
        raise ExportFormatError(f"{where} is not canonical JSON: {error}") from error
    if canonical + b"\n" != line:
        raise ExportFormatError(f"{where} is not in canonical form: it was edited")
    return value


def _checkpoint_json(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "at_ms": checkpoint.at_ms,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def _bad(seq: int | None, problem: str) -> VerifyResult:
    return VerifyResult(False, 0, 0, 0, "", seq, problem)
