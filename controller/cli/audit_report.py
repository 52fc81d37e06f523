"""``corral audit report``: the conformance report an auditor files, with its proof.

Three sources, as for the other audit commands:

- the controller (default): the records up to ``--to`` are exported over the
  API to a file beside the report (``--export``, default ``REPORT.audit.jsonl``)
  and the report is computed from the very records written to it, their
  chain checked here as they are written, so the auditor keeps exactly what
  the report was made from; the controller's own verification of its live
  chain (asked for while the records stream) is shown too;
- ``--data-dir DIR``: the store file, read directly; the live chain is verified
  (``--export FILE`` also writes and uses an export, as above);
- ``--file EXPORT``: an export written earlier, verified and read offline.

The page is written even when the chain does not verify (it says so at the
top); the exit code is then 1, as for ``corral audit verify``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import multiprocessing
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from agent.collector import collector_paused
from controller.audit import export as audit_export
from controller.audit.chain import Checkpoint, VerifyResult, key_id
from controller.audit.errors import AuditError
from controller.audit.export_read import export_rows, export_trailer
from controller.audit.keys import load_key
from controller.audit.ports import AuditLog
from controller.audit.report import build_report
from controller.audit.report_facts import Report
from controller.audit.report_format import percent
from controller.audit.report_html import render_html
from controller.audit.report_json import report_json
from controller.audit.report_proof import ChainCheck, Proof, verify_command
from controller.audit.row import Row
from controller.audit.sqlite import SqliteAuditLog
from controller.cli import audit_source
from controller.cli.client import DEFAULT_CONTROLLER

EXPORT_SUFFIX = ".audit.jsonl"

Make = Callable[[Iterable[Row]], Report]
T = TypeVar("T")
# From this size on, the chain is verified in a worker process while the records are folded.
BACKGROUND_BYTES = 32 * 1024 * 1024


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], source: argparse.ArgumentParser
) -> None:
    """Add ``corral audit report`` to the ``corral audit`` subcommands."""
    report = commands.add_parser(
        "report",
        parents=[source],
        help="a self-contained HTML (or JSON) conformance report with its proof",
        description=(
            "A conformance report to file: one self-contained HTML page (or JSON), every"
            " number computed from the audit log, with the proof that re-checks it."
            " From the controller, the records are exported beside the report"
            f" (OUT{EXPORT_SUFFIX}) and the report is made from that file."
        ),
    )
    report.add_argument("--from", dest="since", metavar="T1", required=True, help="ISO 8601 or ms")
    report.add_argument("--to", dest="until", metavar="T2", default="now", help="ISO, ms or now")
    report.add_argument("--group", metavar="G", help="only this group")
    report.add_argument("--out", metavar="FILE", required=True, help="where to write ('-': stdout)")
    report.add_argument("--format", choices=("html", "json"), default="html")
    report.add_argument("--file", metavar="EXPORT", type=Path, help="an export file (offline)")
    report.add_argument(
        "--export",
        metavar="FILE",
        type=Path,
        help=f"write the records used here (default with --controller: OUT{EXPORT_SUFFIX})",
    )
    report.add_argument("--key-file", metavar="FILE", type=Path, help="check checkpoint signatures")
    report.set_defaults(handler=run_report)


@audit_source.guarded
def run_report(args: argparse.Namespace) -> int:
    now = int(time.time() * 1000)
    from_ms = audit_source.parse_time(args.since, now_ms=now)
    to_ms = audit_source.parse_time(args.until, now_ms=now)
    if to_ms <= from_ms:
        raise AuditError("--to must be after --from")
    key = load_key(args.key_file, os.environ)
    if args.file is not None and (args.data_dir is not None or args.controller):
        raise AuditError("give one source: --file EXPORT, --data-dir DIR or --controller")

    def make(rows: Iterable[Row]) -> Report:
        return build_report(rows, from_ms=from_ms, to_ms=to_ms, group=args.group)

    # the fold and the page: millions of objects alive until the page is written
    # (the collector's passes over them were about a third of the time on a
    # million records)
    with collector_paused():
        if args.file is not None:
            if args.export is not None:
                raise AuditError("--export writes an export; --file already is one")
            source = f"the export {args.file}"
            report, proof = _from_export(args.file, make, key=key, source=source)
        elif args.data_dir is not None:
            report, proof = _from_data_dir(args, make, key=key, to_ms=to_ms)
        else:
            report, proof = _from_controller(args, make, key=key, to_ms=to_ms)
        if args.format == "json":
            document = report_json(report, proof, generated_ms=now)
            # Compact: the C encoder (indent= falls back to a Python one, 20x slower).
            text = json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"
        else:
            text = render_html(report, proof, generated_ms=now)
    _write(args.out, text)
    if args.out != "-":
        print(
            f"wrote {args.out}: {len(report.instances)} instances,"
            f" {percent(report.share)} conformant (time-weighted), {len(report.taints)} taints;"
            f" audit chain {'intact' if proof.ok else 'BROKEN'}"
        )
        if proof.export_path:
            print(f"made from the export {proof.export_path}")
        print(f"re-verify offline: {proof.command}")
    if not proof.ok:
        for check in proof.checks:
            if not check.result.ok:
                print(f"corral: {check.what}: {check.result.describe()}", file=sys.stderr)
        return audit_source.EXIT_BROKEN
    return audit_source.EXIT_OK


def _from_export(
    path: Path, make: Make, *, key: bytes | None, source: str, checks: tuple[ChainCheck, ...] = ()
) -> tuple[Report, Proof]:
    verifying = _verifier(path, audit_export.verify_export, path, key=key)
    report = make(export_rows(path))
    result = verifying()
    trailer = export_trailer(path) if result.ok else None
    proof = Proof(
        source=source,
        checks=(*checks, ChainCheck(f"the export file {path}", result)),
        checkpoints=trailer.checkpoints if trailer else (),
        key_id=key_id(key) if key is not None else None,
        export_path=str(path),
        export_sha256=trailer.file_sha256 if trailer else None,
        command=verify_command(export=str(path), keyed=key is not None),
    )
    return report, proof


def _from_data_dir(
    args: argparse.Namespace, make: Make, *, key: bytes | None, to_ms: int
) -> tuple[Report, Proof]:
    source = f"the data dir {args.data_dir}"
    what = f"the audit log in {args.data_dir}"
    store = args.data_dir / audit_source.STORE_FILE
    with audit_source.open_log(args, integrity=False) as log:
        # The store's integrity check reads the whole file, as verification does: both
        # are the worker's (its other checks were made before it was opened).
        verifying = _verifier(store, verify_store, args.data_dir, key=key)
        try:
            if args.export is not None:

                def live() -> ChainCheck:
                    return ChainCheck(what, verifying()[0])

                return _exported(
                    log, args.export, make, key=key, to_ms=to_ms, source=source, live=live
                )
            report = make(log.rows(until_ms=to_ms))
        except (AuditError, sqlite3.Error) as error:
            verifying()  # a damaged store is refused for what its check found
            if isinstance(error, AuditError):
                raise
            raise AuditError(f"cannot read the audit log in {store}: {error}") from error
    result, checkpoints = verifying()
    proof = Proof(
        source=source,
        checks=(ChainCheck(what, result),),
        checkpoints=checkpoints,
        key_id=key_id(key) if key is not None else None,
        export_path=None,
        export_sha256=None,
        command=verify_command(data_dir=str(args.data_dir), keyed=key is not None),
    )
    return report, proof


def _from_controller(
    args: argparse.Namespace, make: Make, *, key: bytes | None, to_ms: int
) -> tuple[Report, Proof]:
    if args.out == "-" and args.export is None:
        raise AuditError("with --out - give --export FILE: the report is made from that export")
    export = args.export or Path(str(Path(args.out).with_suffix("")) + EXPORT_SUFFIX)
    address = args.controller or os.environ.get("CORRAL_CONTROLLER") or DEFAULT_CONTROLLER
    with audit_source.open_log(args) as log, ThreadPoolExecutor(max_workers=1) as pool:
        # The controller re-hashes its chain while it streams the records.
        verifying = pool.submit(log.verify, key=key)

        def live() -> ChainCheck:
            return ChainCheck("the controller's audit log (VerifyAudit)", verifying.result())

        source = f"the controller at {address}"
        return _exported(log, export, make, key=key, to_ms=to_ms, source=source, live=live)


def _exported(
    log: AuditLog,
    path: Path,
    make: Make,
    *,
    key: bytes | None,
    to_ms: int,
    source: str,
    live: Callable[[], ChainCheck],
) -> tuple[Report, Proof]:
    """Export every retained record up to ``to_ms`` to ``path``, the report made from the
    records as they are written; ``live`` is the check of the log they came from.

    The export's own check is that of the records written, over the text of
    each line (:class:`audit_export.ExportWriter`), so the file is not read
    back; ``corral audit verify --file`` re-checks it offline. No half-written
    file is left behind.
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as stream:
            writer = audit_export.ExportWriter(stream, since_ms=None, until_ms=to_ms)
            rows = _writing(writer, log.rows(until_ms=to_ms))
            report = make(rows)
            collections.deque(rows, maxlen=0)  # whatever the report did not read is written too
            summary = writer.finish(log.checkpoints(), key=key)
        checks = (live(), ChainCheck(f"the export file {path}", summary.chain))
        partial.replace(path)
    except OSError as error:
        raise AuditError(f"cannot write the export {path}: {error.strerror}") from error
    finally:
        partial.unlink(missing_ok=True)
    proof = Proof(
        source=source,
        checks=checks,
        checkpoints=summary.checkpoints,
        key_id=key_id(key) if key is not None else None,
        export_path=str(path),
        export_sha256=summary.file_sha256,
        command=verify_command(export=str(path), keyed=key is not None),
    )
    return report, proof


def _writing(writer: audit_export.ExportWriter, rows: Iterable[Row]) -> Iterator[Row]:
    for row in rows:
        writer.write(row)
        yield row


def verify_store(
    data_dir: Path, *, key: bytes | None
) -> tuple[VerifyResult, tuple[Checkpoint, ...]]:
    """Check the store in ``data_dir``, verify its chain and list its checkpoints.

    Runs in a worker process for a large store. Raises AuditError when the store
    is emptied, cut or damaged (:func:`audit_source.check_store`).
    """
    audit_source.check_store(data_dir)
    log = SqliteAuditLog.open(data_dir / audit_source.STORE_FILE, read_only=True)
    try:
        return log.verify(key=key), tuple(log.checkpoints())
    finally:
        log.close()


def _verifier(
    source: Path, function: Callable[..., T], *args: Any, **kwargs: Any
) -> Callable[[], T]:
    """Verify a large source in the background, a small one here (a worker costs ~1 s)."""
    try:
        large = source.stat().st_size >= BACKGROUND_BYTES
    except OSError:
        large = False
    if large:
        return _in_background(function, *args, **kwargs)
    return functools.partial(function, *args, **kwargs)


def _in_background(function: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
    """Run ``function`` in a worker process while this one folds the records.

    Verifying re-hashes every record; on a large log it takes as long as the
    fold, so the two run side by side. Returns a callable that waits for the
    answer (and re-raises what the worker raised). If no worker can be
    started, the function runs here, when the answer is asked for.
    """
    try:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        future = pool.submit(function, *args, **kwargs)
    except (OSError, BrokenProcessPool) as error:
        print(f"corral: verifying in this process ({error})", file=sys.stderr)
        return functools.partial(function, *args, **kwargs)

    def wait() -> T:
        try:
            return future.result()
        except BrokenProcessPool as error:
            print(f"corral: the verifying process died ({error}); verifying here", file=sys.stderr)
            return function(*args, **kwargs)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return wait


def _write(out: str, text: str) -> None:
    if out == "-":
        sys.stdout.write(text)
        return
    path = Path(out)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as error:
        raise AuditError(f"cannot write {path}: {error.strerror}") from error
