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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from controller.audit.chain import (
    ChainWalk,
    Checkpoint,
    Link,
    Position,
    VerifyResult,
    verify_checkpoints,
    verify_links,
)
from controller.audit.errors import AuditError, ExportFormatError, InvalidEventError
from controller.audit.export_read import last_line, line_row, parse_object, trailer_checkpoints
from controller.audit.ports import AuditLog
from controller.audit.record import EventKind, canonical_json
from controller.audit.row import Row, export_line, row_halves, text_digest

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What was written: how many records, the chain positions they span, the trailer's
    checkpoints and file digest, and whether the records written verify (``chain``)."""

    count: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None
    checkpoints: tuple[Checkpoint, ...]
    file_sha256: str
    chain: VerifyResult


def export_jsonl(
    log: AuditLog, out: Path, *, since_ms: int | None = None, until_ms: int | None = None
) -> ExportSummary:
    """Write records with ``since_ms <= at_ms <= until_ms`` to ``out``; return a summary."""
    with out.open("wb") as stream:
        writer = ExportWriter(stream, since_ms=since_ms, until_ms=until_ms)
        for row in log.rows(since_ms=since_ms, until_ms=until_ms):
            writer.write(row)
        return writer.finish(log.checkpoints())


class ExportWriter:
    """An export being written to ``stream``: the header now, a line per :meth:`write`,
    the trailer at :meth:`finish`.

    The chain of the records written is checked as they are written, over the
    very text of each line (without its hash), so a caller that reads the
    records once (a report made from the controller) knows whether the file
    verifies without reading it back.
    """

    def __init__(self, stream: IO[bytes], *, since_ms: int | None, until_ms: int | None) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        self._pending: list[str] = []  # lines not yet written: they go out in blocks
        self._walk: ChainWalk | None = None
        self._hashes: dict[int, str] = {}  # of the checkpoint records, for the trailer's
        self.count = 0
        self.first: Position | None = None
        self.last: Position | None = None
        header = {"corral_audit_export": FORMAT_VERSION, "since_ms": since_ms, "until_ms": until_ms}
        self._line(canonical_json(header).decode("utf-8"))

    def write(self, row: Row) -> None:
        """Write the record ``row`` as the next line. Raises InvalidEventError if unwritable."""
        seq, prev, digest = row[0], row[10], row[11]
        head, tail = row_halves(row)
        self._line(export_line(head, tail, digest))
        if self._walk is None:
            self._walk = ChainWalk(Position(seq - 1, prev))
            self.first = Position(seq, digest)
        self._walk.add((seq, prev, digest, text_digest(head + tail)))
        if row[2] == EventKind.CHECKPOINT:
            self._hashes[seq] = digest
        self.last = Position(seq, digest)
        self.count += 1

    def finish(
        self, checkpoints: Iterable[Checkpoint], *, key: bytes | None = None
    ) -> ExportSummary:
        """Write the trailer with the ``checkpoints`` among the records written.

        The summary's ``chain`` is the records' verification, the checkpoints'
        signatures checked with ``key`` when one is given.
        """
        first, last = self.first, self.last
        covered = tuple(
            c
            for c in checkpoints
            if first is not None and last is not None and first.seq <= c.seq <= last.seq
        )
        end = {
            "count": self.count,
            "last_seq": last.seq if last else None,
            "last_hash": last.hash if last else None,
            "checkpoints": [_checkpoint_json(c) for c in covered],
        }
        self._flush()
        self._digest.update(canonical_json(end))
        file_sha256 = self._digest.hexdigest()
        self._stream.write(canonical_json({"end": end, "file_sha256": file_sha256}) + b"\n")
        walk = self._walk or ChainWalk(Position(0, ""))
        chain = verify_checkpoints(
            walk.result(), covered, self._hashes, base=Position(0, ""), key=key
        )
        return ExportSummary(
            self.count,
            first.seq if first else None,
            last.seq if last else None,
            last.hash if last else None,
            covered,
            file_sha256,
            chain,
        )

    def _line(self, text: str) -> None:
        self._pending.append(text)
        if len(self._pending) >= _BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pending.append("")
            block = "\n".join(self._pending).encode("utf-8")
            self._stream.write(block)
            self._digest.update(block)
            self._pending = []


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
        links = lines.links()
        first = next(links, None)
        if first is None:
            result = verify_links((), base=Position(0, ""), head=head)
        else:
            base = Position(first[0] - 1, first[1])
            result = verify_links(itertools.chain((first,), links), base=base, head=head)
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
    """The record lines between the header and the trailer at ``end``, checked and hashed.

    Keeps what the trailer is checked against once they are read: how many
    there were, the hashes of the records ``wanted`` (the checkpoints), and the
    digest of every byte before the trailer.
    """

    def __init__(self, stream: IO[bytes], header: bytes, end: int, wanted: set[int]) -> None:
        self.stream, self.at, self.end, self.wanted = stream, len(header), end, wanted
        self.digest = hashlib.sha256(header)
        self.count = 0
        self.hashes: dict[int, str] = {}
        self.canonical_data: set[str] = set()

    def links(self) -> Iterator[Link]:
        for number, line in enumerate(self.stream, start=2):
            self.at += len(line)
            if self.at > self.end:
                return
            self.digest.update(line)
            link = self.link(number, line)
            self.count += 1
            if link[0] in self.wanted:
                self.hashes[link[0]] = link[2]
            yield link

    def link(self, number: int, line: bytes) -> Link:
        """The record on a line as a link, the line checked to be exactly canonical.

        It is when it equals the canonical text of the row it holds (every
        field in order, nothing missing or extra) with ``data`` as written, and
        that ``data`` text is the canonical encoding of what it holds. The data
        text sits between the first top-level ``,"data":`` and the last
        ``,"group":``: before it come only text and a number, after it only
        scalars, and no string holds an unescaped quote. The hash is over the
        same text without the hash.
        """
        try:
            text = line[:-1].decode("utf-8")
            value = _STRICT(text)
        except ValueError as error:  # UnicodeDecodeError is one
            raise ExportFormatError(f"line {number} is not JSON: {error}") from error
        if not isinstance(value, dict):
            raise ExportFormatError(f"line {number} is not a JSON object")
        seq, at_ms, kind, actor, reason, instance, related, group, image, data, prev, stored = (
            line_row(number, value)
        )
        data_text = text[text.find(',"data":') + 8 : text.rfind(',"group":')]
        row = (seq, at_ms, kind, actor, reason, instance, related, group, image, data_text)
        try:
            head, tail = row_halves((*row, prev, stored))
            canonical = export_line(head, tail, stored) == text
        except InvalidEventError as error:
            raise ExportFormatError(f"line {number} is not an audit record: {error}") from error
        if canonical and data_text not in self.canonical_data:
            # Few distinct data texts in a fleet's history: each is re-encoded once.
            canonical = _ENCODE(data) == data_text
            if len(self.canonical_data) >= _REMEMBERED:
                self.canonical_data.clear()
            if canonical:
                self.canonical_data.add(data_text)
        if not canonical:
            raise ExportFormatError(f"line {number} is not in canonical form: it was edited")
        return seq, prev, stored, text_digest(head + tail)


def _refuse(text: str) -> None:
    raise ValueError(f"{text} is not canonical (integers only)")


_STRICT = json.JSONDecoder(parse_float=_refuse, parse_constant=_refuse).decode
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_REMEMBERED = 100_000
_BLOCK = 1000


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
