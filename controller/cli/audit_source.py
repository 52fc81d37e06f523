"""Where the ``corral audit`` commands read the log from, and what they share.

``--data-dir DIR`` opens the controller's SQLite store file (checked first:
never "ok, 0 records" from an emptied or damaged store); otherwise the
running controller's ``AuditService`` is asked. Also the exit codes, the
refusal-to-message wrapper and the time parser every audit command uses.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from controller.audit.errors import AuditError
from controller.audit.ports import AuditLog
from controller.audit.sqlite import SqliteAuditLog
from controller.cli.audit_remote import AuditClient, RemoteAuditLog
from controller.cli.client import DEFAULT_CONTROLLER, EXIT_UNAVAILABLE, ClientError, tls_from_args
from controller.security.errors import CertificateError
from controller.store.sqlite_open import AUDIT_TABLES, diagnose

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 2

# The controller's store keeps its SQLite file under this name in --data-dir.
STORE_FILE = "corral.db"


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the audit package's refusals into a message and exit code 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (AuditError, CertificateError) as error:
            print(f"corral: {error}", file=sys.stderr)
            return EXIT_USAGE
        except ClientError as error:
            print(f"corral: {error}", file=sys.stderr)
            return EXIT_UNAVAILABLE if error.exit_code == EXIT_UNAVAILABLE else EXIT_USAGE

    return run


class _OpenLog:
    """A context manager yielding the audit log named by the command's source options."""

    def __init__(self, log: SqliteAuditLog | RemoteAuditLog) -> None:
        self.log = log

    def __enter__(self) -> AuditLog:
        return self.log

    def __exit__(self, *exc: object) -> None:
        self.log.close()


def open_log(
    args: argparse.Namespace, *, writable: bool = False, integrity: bool = True
) -> _OpenLog:
    """``--data-dir`` opens the store file; otherwise the controller's API is asked.

    The store is checked first (:func:`check_store`); ``integrity=False`` leaves
    its whole-file integrity check to the caller (the report runs it in its
    verifying worker, beside the fold).
    """
    if args.data_dir is None:
        if writable:
            raise AuditError("this writes the store file: give --data-dir DIR")
        address = args.controller or os.environ.get("CORRAL_CONTROLLER") or DEFAULT_CONTROLLER
        client = AuditClient(address, timeout=args.timeout, tls=tls_from_args(args))
        return _OpenLog(RemoteAuditLog(client))
    if args.controller:
        raise AuditError("give either --data-dir DIR or --controller HOST:PORT, not both")
    path = args.data_dir / STORE_FILE
    if not path.exists():
        raise AuditError(f"no controller store at {path}")
    check_store(args.data_dir, integrity=integrity)
    return _OpenLog(SqliteAuditLog.open(path, read_only=not writable))


def check_store(data_dir: Path, *, integrity: bool = True) -> None:
    """Refuse an emptied, cut or damaged store in ``data_dir`` with AuditError naming why.

    It is evidence of nothing: say so, never "ok, 0 records". The integrity
    check reads the whole file; ``integrity=False`` leaves it out.
    """
    problem = diagnose(data_dir, tables=AUDIT_TABLES, integrity=integrity)
    if problem is not None:
        raise AuditError(problem)


def parse_time(text: str, *, now_ms: int) -> int:
    """``now``, epoch milliseconds, or ISO 8601 (no zone means UTC) -> epoch ms."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise AuditError(f"not a time: {text!r} (use ISO 8601, epoch ms or 'now')") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
