"""The outbox on disk: reports that must survive SIGTERM, SIGKILL and a reboot.

One file, ``DATA_DIR/outbox.json``, holds every report the outbox keeps when
it must not lose them (see :mod:`agent.daemon.outbox` for when). It is replaced
atomically: written to a temporary file in the same directory, fsynced,
renamed over the old one, and the directory fsynced, so a crash at any point
leaves either the old file or the new one, never a mix.

Format (version 1): one header line ``corral-agent-outbox 1 <sha256> <length>``
followed by ``length`` bytes of JSON, ``{"reports": [...]}``, whose SHA-256 the
header names. Bytes (roots, paths, digests, link targets) are base64. A file
that does not parse, fails its checksum or holds a malformed report is
*damaged*: :meth:`OutboxFile.load` logs one line, renames it aside to
``outbox.json.damaged-<unix ms>`` (never deleted: an operator may want the
evidence) and starts with an empty outbox.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.daemon.report import PendingReport
from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryError, EntryType
from agent.manifest.report import Evidence, Footprint, Report

log = logging.getLogger(__name__)

FILE_NAME = "outbox.json"
MAGIC = "corral-agent-outbox"
VERSION = 1
DAMAGED_SUFFIX = ".damaged-"
_TEMPORARY_PREFIX = ".outbox."


class DamagedOutboxError(ValueError):
    """The outbox file cannot be trusted (truncated, corrupt or malformed)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise DamagedOutboxError("expected base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise DamagedOutboxError(f"bad base64: {exc}") from None


def _entry_to_json(entry: Entry) -> list[Any]:
    return [
        _b64(entry.path),
        int(entry.type),
        entry.mode,
        entry.uid,
        entry.gid,
        entry.size,
        _b64(entry.sha256),
        _b64(entry.link_target),
        entry.rdev_major,
        entry.rdev_minor,
        int(entry.error),
    ]


def _entry_from_json(value: Any) -> Entry:
    if not isinstance(value, list) or len(value) != 11:
        raise DamagedOutboxError("an entry must be a list of 11 fields")
    path, kind, mode, uid, gid, size, sha, target, major, minor, error = value
    return Entry(
        _unb64(path),
        EntryType(_int(kind)),
        _int(mode),
        _int(uid),
        _int(gid),
        _int(size),
        _unb64(sha),
        _unb64(target),
        _int(major),
        _int(minor),
        EntryError(_int(error)),
    )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DamagedOutboxError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise DamagedOutboxError(f"expected text, got {type(value).__name__}")
    return value


def report_to_json(report: PendingReport) -> dict[str, Any]:
    header = report.header
    document: dict[str, Any] = {
        "instance_id": header.instance_id,
        "group": header.group,
        "image_ref": header.image_ref,
        "image_digest": header.image_digest,
        "root": _b64(header.root),
        "seq": header.seq,
        "boot_id": header.boot_id,
        "scanned_at_ms": header.scanned_at_ms,
        "rss_bytes": header.footprint.rss_bytes,
        "cpu_millis": header.footprint.cpu_millis,
        "agent_version": header.agent_version,
    }
    if report.evidence is not None:
        document["evidence"] = {
            "truncated": report.evidence.truncated,
            "total_changes": report.evidence.total_changes,
            "changes": [
                {
                    "kind": change.kind.value,
                    "path": _b64(change.path),
                    "attributes": list(change.attributes),
                    "entry": None if change.entry is None else _entry_to_json(change.entry),
                }
                for change in report.evidence.changes
            ],
        }
    return document


def report_from_json(document: Any) -> PendingReport:
    """The report a JSON document describes; raises DamagedOutboxError when malformed."""
    if not isinstance(document, dict):
        raise DamagedOutboxError("a report must be an object")
    try:
        header = Report(
            instance_id=_str(document["instance_id"]),
            group=_str(document["group"]),
            image_ref=_str(document["image_ref"]),
            image_digest=_str(document["image_digest"]),
            root=_unb64(document["root"]),
            seq=_int(document["seq"]),
            boot_id=_str(document["boot_id"]),
            scanned_at_ms=_int(document["scanned_at_ms"]),
            footprint=Footprint(
                rss_bytes=_int(document["rss_bytes"]), cpu_millis=_int(document["cpu_millis"])
            ),
            agent_version=_str(document["agent_version"]),
        )
        raw = document.get("evidence")
        if raw is None:
            return PendingReport(header)
        if not isinstance(raw, dict) or not isinstance(raw.get("changes"), list):
            raise DamagedOutboxError("evidence must be an object with a list of changes")
        changes = tuple(_change_from_json(change) for change in raw["changes"])
        truncated = raw["truncated"]
        if not isinstance(truncated, bool):
            raise DamagedOutboxError("evidence.truncated must be true or false")
        evidence = Evidence(
            changes=changes, truncated=truncated, total_changes=_int(raw["total_changes"])
        )
    except KeyError as exc:
        raise DamagedOutboxError(f"missing field {exc}") from None
    except ValueError as exc:  # an unknown enum value (DamagedOutboxError passes through)
        if isinstance(exc, DamagedOutboxError):
            raise
        raise DamagedOutboxError(str(exc)) from None
    return PendingReport(header, evidence)


def _change_from_json(value: Any) -> Change:
    if not isinstance(value, dict) or not isinstance(value.get("attributes"), list):
        raise DamagedOutboxError("a change must be an object with a list of attributes")
    entry = value.get("entry")
    return Change(
        kind=ChangeKind(_str(value["kind"])),
        path=_unb64(value["path"]),
        entry=None if entry is None else _entry_from_json(entry),
        attributes=tuple(_str(name) for name in value["attributes"]),
    )


def encode(reports: Sequence[PendingReport]) -> bytes:
    """The file's bytes for ``reports`` (header line, then the checksummed JSON body)."""
    body = json.dumps(
        {"reports": [report_to_json(report) for report in reports]}, separators=(",", ":")
    ).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    return f"{MAGIC} {VERSION} {digest} {len(body)}\n".encode("ascii") + body


def decode(data: bytes) -> list[PendingReport]:
    """The reports in a file's bytes; raises DamagedOutboxError when it cannot be trusted."""
    head, newline, body = data.partition(b"\n")
    if not newline:
        raise DamagedOutboxError("no header line (truncated or not an outbox file)")
    fields = head.split(b" ")
    if len(fields) != 4 or fields[0] != MAGIC.encode("ascii"):
        raise DamagedOutboxError("not an outbox file (bad header line)")
    if fields[1] != str(VERSION).encode("ascii"):
        raise DamagedOutboxError(f"unsupported outbox format version {fields[1]!r}")
    if not fields[3].isdigit() or int(fields[3]) != len(body):
        raise DamagedOutboxError(
            f"truncated: the header says {fields[3].decode('ascii', 'replace')} bytes, "
            f"{len(body)} follow"
        )
    if hashlib.sha256(body).hexdigest().encode("ascii") != fields[2]:
        raise DamagedOutboxError("checksum mismatch")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise DamagedOutboxError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("reports"), list):
        raise DamagedOutboxError("the body must be an object with a list of reports")
    return [report_from_json(report) for report in document["reports"]]


class OutboxFile:
    """``DATA_DIR/outbox.json``: load it once at start, then replace it atomically."""

    def __init__(
        self,
        data_dir: str,
        *,
        on_damaged: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = data_dir
        self.path = os.path.join(data_dir, FILE_NAME)
        self._on_damaged = on_damaged
        self._clock = clock

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> list[PendingReport]:
        """The persisted reports; a damaged file is set aside (one log line) and yields none.

        A file that exists but cannot be read is logged the same way and left in place.
        Temporary files left by a write that was killed are removed.
        """
        self._remove_temporaries()
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error(
                "cannot read outbox file %s (%s); starting with an empty outbox",
                self.path,
                exc.strerror,
            )
            if self._on_damaged is not None:
                self._on_damaged()
            return []
        try:
            return decode(data)
        except DamagedOutboxError as exc:
            aside = f"{self.path}{DAMAGED_SUFFIX}{int(self._clock() * 1000)}"
            try:
                os.replace(self.path, aside)
                where = f"set aside as {aside}"
            except OSError as move:
                where = f"could not set it aside ({move.strerror}); it will be overwritten"
            log.error(
                "outbox file %s is damaged (%s); %s; the reports it held are not delivered",
                self.path,
                exc,
                where,
            )
            if self._on_damaged is not None:
                self._on_damaged()
            return []

    def _remove_temporaries(self) -> None:
        try:
            names = os.listdir(self._dir)
        except OSError:
            return
        for name in names:
            if name.startswith(_TEMPORARY_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._dir, name))

    def save(self, reports: Sequence[PendingReport]) -> None:
        """Replace the file with ``reports`` atomically and durably. Raises OSError."""
        data = encode(reports)
        fd, temporary = tempfile.mkstemp(prefix=_TEMPORARY_PREFIX, dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._sync_dir()

    def remove(self) -> None:
        """Delete the file (nothing left to keep). Raises OSError (not when already gone)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
