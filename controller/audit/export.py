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
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.audit.chain import (
    Checkpoint,
    Position,
    VerifyResult,
    verify_chain,
    verify_checkpoints,
)
from controller.audit.errors import AuditError, ExportFormatError
from controller.audit.ports import AuditLog
from controller.audit.record import canonical_json, hash_stored_body

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
        for record in log.records(since_ms=since_ms, until_ms=until_ms):
            write(canonical_json(record.to_json()))
            count += 1
            first = first or Position(record.seq, record.hash)
            last = Position(record.seq, record.hash)
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


@dataclass(frozen=True, slots=True)
class _Line:
    """An exported record line, verifiable without rebuilding an Event."""

    fields: Mapping[str, Any]

    @property
    def seq(self) -> int:
        value = self.fields.get("seq")
        return value if isinstance(value, int) else -1

    @property
    def prev_hash(self) -> str:
        return str(self.fields.get("prev"))

    @property
    def hash(self) -> str:
        return str(self.fields.get("hash"))

    def digest(self) -> str:
        return hash_stored_body({k: v for k, v in self.fields.items() if k != "hash"})


def verify_export(path: Path, *, key: bytes | None = None) -> VerifyResult:
    """Verify an export file offline; the result names the first bad record or line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from error
    return verify_export_bytes(data, key=key)


def verify_export_bytes(data: bytes, *, key: bytes | None = None) -> VerifyResult:
    """Verify the bytes of an export (see ``verify_export``)."""
    raw_lines = data.split(b"\n")
    if len(raw_lines) < 3 or raw_lines[-1] != b"":
        return _bad(None, "the file is truncated or does not end with a newline")
    lines = raw_lines[:-1]
    try:
        parsed = [_parse(number, line) for number, line in enumerate(lines, start=1)]
    except ExportFormatError as error:
        return _bad(None, str(error))
    header, records, trailer = parsed[0], [_Line(p) for p in parsed[1:-1]], parsed[-1]
    if header.get("corral_audit_export") != FORMAT_VERSION:
        return _bad(None, "line 1 is not a corral audit export header (version 1)")
    base = Position(records[0].seq - 1, records[0].prev_hash) if records else Position(0, "")
    end = trailer.get("end")
    if not isinstance(end, dict):
        return _bad(None, "the last line is not the export trailer")
    last_seq, last_hash = end.get("last_seq"), end.get("last_hash")
    head = Position(last_seq, str(last_hash)) if isinstance(last_seq, int) else None
    result = verify_chain(records, base=base, head=head)
    if not result.ok:
        return result
    if end.get("count") != len(records):
        return _bad(
            None, f"the trailer counts {end.get('count')} records, the file has {len(records)}"
        )
    try:
        checkpoints = [Checkpoint(**c) for c in end.get("checkpoints", [])]
    except TypeError:
        return _bad(None, "the trailer's checkpoints are malformed")
    hashes = {r.seq: r.hash for r in records}
    result = verify_checkpoints(result, checkpoints, hashes, base=Position(0, ""), key=key)
    if not result.ok:
        return result
    digest = hashlib.sha256(b"".join(line + b"\n" for line in lines[:-1]))
    digest.update(canonical_json(end))
    if trailer.get("file_sha256") != digest.hexdigest():
        return _bad(None, "the file's digest does not match its trailer: a line was edited")
    return result


def _parse(number: int, line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ExportFormatError(f"line {number} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ExportFormatError(f"line {number} is not a JSON object")
    try:
        canonical = canonical_json(value)
    except AuditError as error:
        raise ExportFormatError(f"line {number} is not canonical JSON: {error}") from error
    if canonical != line:
        raise ExportFormatError(f"line {number} is not in canonical form: it was edited")
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
