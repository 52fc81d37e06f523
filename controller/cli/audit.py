"""``corral audit``: the auditors' read-only questions, answered from the audit log.

``conformance`` (the fleet at a past moment), ``history`` (one instance, launch
to retire), ``images`` (registered when, by whom, where it ran, when desired),
``export`` (JSON Lines), ``verify`` (the live chain or an export file) and
``report`` (a conformance report to file, in ``audit_report``).
``checkpoint`` and ``prune`` are the operator's retention tools.

By default they ask the running controller (``--controller HOST:PORT`` or
``$CORRAL_CONTROLLER``, gRPC ``AuditService``, read-only); ``--data-dir DIR``
reads the controller's SQLite file directly instead (offline, and the only
source for ``checkpoint`` and ``prune``, which write). Data goes to stdout,
errors to stderr. Exit codes: 0 ok / intact, 1 the chain does not verify, 2
usage or input error, 69 the controller is unavailable.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from controller.audit import export as audit_export
from controller.audit.keys import load_key
from controller.audit.queries import Conformance, ImageHistory, InstanceHistory
from controller.audit.record import Record
from controller.audit.report_json import verify_json
from controller.cli import audit_report
from controller.cli.audit_source import (
    EXIT_BROKEN,
    EXIT_OK,
    EXIT_USAGE,
    STORE_FILE,
    guarded,
    open_log,
    parse_time,
)
from controller.cli.client import (
    add_controller_argument,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``corral audit`` and its subcommands."""
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help=f"the controller's data dir (reads DIR/{STORE_FILE} directly, offline)",
    )
    add_controller_argument(source)
    audit = subparsers.add_parser(
        "audit", help="answer auditors' questions from the tamper-evident history"
    )
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="QUESTION")

    conformance = commands.add_parser(
        "conformance", parents=[source], help="every instance at a moment and the fleet's ratio"
    )
    conformance.add_argument("--at", metavar="TIME", default="now", help="ISO 8601, epoch ms, now")
    conformance.add_argument("--group", metavar="G", help="only this group")
    formats = conformance.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="one JSON object")
    formats.add_argument("--csv", action="store_true", help="CSV rows (summary on stderr)")
    conformance.set_defaults(handler=run_conformance)

    history = commands.add_parser("history", parents=[source], help="one instance's whole life")
    history.add_argument("instance", metavar="INSTANCE")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=run_history)

    images = commands.add_parser("images", parents=[source], help="every image, where and when")
    images.add_argument("--json", action="store_true")
    images.set_defaults(handler=run_images)

    exporter = commands.add_parser("export", parents=[source], help="write JSON Lines")
    exporter.add_argument("--since", metavar="T", required=True, help="ISO 8601 or epoch ms")
    exporter.add_argument("--until", metavar="T", required=True, help="ISO 8601, epoch ms, now")
    exporter.add_argument("--out", metavar="FILE", type=Path, required=True)
    exporter.set_defaults(handler=run_export)

    verifier = commands.add_parser(
        "verify", parents=[source], help="check the chain (live store or an export file)"
    )
    verifier.add_argument("--file", metavar="FILE", type=Path, help="an export to verify offline")
    verifier.add_argument("--key-file", metavar="FILE", type=Path, help="checkpoint HMAC key")
    verifier.add_argument("--json", action="store_true")
    verifier.set_defaults(handler=run_verify)

    checkpoint = commands.add_parser(
        "checkpoint", parents=[source], help="append a checkpoint and print its anchor"
    )
    checkpoint.add_argument("--key-file", metavar="FILE", type=Path, help="sign with this key")
    checkpoint.add_argument("--actor", help="who takes it (default: operator:$USER)")
    checkpoint.set_defaults(handler=run_checkpoint)

    prune = commands.add_parser(
        "prune", parents=[source], help="delete the records before a checkpoint"
    )
    prune.add_argument("--before-seq", metavar="SEQ", type=int, required=True)
    prune.set_defaults(handler=run_prune)

    audit_report.add_parser(commands, source)


@guarded
def run_conformance(args: argparse.Namespace) -> int:
    at_ms = parse_time(args.at, now_ms=_now_ms())
    with open_log(args) as log:
        result = log.conformance_at(at_ms, group=args.group)
    if args.json:
        _print_json(conformance_json(result))
    elif args.csv:
        _write_csv(result, sys.stdout)
        print(_ratio_line(result), file=sys.stderr)
    else:
        print(_ratio_line(result))
        for row in result.instances:
            print(
                f"{row.instance_id}\t{row.group}\t{row.state}\t{format_ms(row.since_ms)}\t{row.image}"
            )
    return EXIT_OK


@guarded
def run_history(args: argparse.Namespace) -> int:
    with open_log(args) as log:
        history = log.instance_history(args.instance)
    if not history.records:
        print(f"corral: no audit records name instance {args.instance}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        _print_json(history_json(history))
        return EXIT_OK
    print(
        f"{history.instance_id}: launched {format_ms(history.launched_ms)},"
        f" retired {format_ms(history.retired_ms)}"
    )
    for record in history.records:
        print(f"{format_ms(record.event.at_ms)}\t#{record.seq}\t{describe(record)}")
    return EXIT_OK


@guarded
def run_images(args: argparse.Namespace) -> int:
    with open_log(args) as log:
        images = log.image_history()
    if args.json:
        _print_json({"images": [image_json(i) for i in images]})
        return EXIT_OK
    for image in images:
        print(
            f"{image.image}\tregistered {format_ms(image.registered_ms)}"
            f" by {image.registered_by or '-'}"
        )
        for span in image.desired:
            print(
                f"  desired by group {span.group} from {format_ms(span.from_ms)}"
                f" until {format_ms(span.until_ms)} ({span.how} by {span.actor})"
            )
        for run in image.runs:
            print(
                f"  ran on {run.instance_id} ({run.group}) from {format_ms(run.from_ms)}"
                f" until {format_ms(run.until_ms)}"
            )
    return EXIT_OK


@guarded
def run_export(args: argparse.Namespace) -> int:
    now = _now_ms()
    since, until = parse_time(args.since, now_ms=now), parse_time(args.until, now_ms=now)
    with open_log(args) as log:
        summary = audit_export.export_jsonl(log, args.out, since_ms=since, until_ms=until)
    print(
        f"exported {summary.count} records (seq {summary.first_seq}..{summary.last_seq})"
        f" to {args.out}; last sha256={summary.last_hash}"
    )
    if not summary.chain.ok:
        print(f"corral: the exported records: {summary.chain.describe()}", file=sys.stderr)
        return EXIT_BROKEN
    return EXIT_OK


@guarded
def run_verify(args: argparse.Namespace) -> int:
    key = load_key(args.key_file, os.environ)
    if args.file is not None:
        result = audit_export.verify_export(args.file, key=key)
    else:
        with open_log(args) as log:
            result = log.verify(key=key)
    if args.json:
        _print_json(verify_json(result))
    else:
        print(result.describe(), file=sys.stdout if result.ok else sys.stderr)
    return EXIT_OK if result.ok else EXIT_BROKEN


@guarded
def run_checkpoint(args: argparse.Namespace) -> int:
    key = load_key(args.key_file, os.environ)
    with open_log(args, writable=True) as log:
        actor = args.actor or f"operator:{os.environ.get('USER', 'unknown')}"
        checkpoint = log.checkpoint(at_ms=_now_ms(), actor=actor, key=key)
    signed = f" signed by key {checkpoint.key_id}" if checkpoint.key_id else " (unsigned)"
    print(f"checkpoint at seq {checkpoint.seq}{signed}; publish this anchor:")
    print(checkpoint.anchor)
    return EXIT_OK


@guarded
def run_prune(args: argparse.Namespace) -> int:
    with open_log(args, writable=True) as log:
        match = [c for c in log.checkpoints() if c.seq == args.before_seq]
        if not match:
            print(f"corral: seq {args.before_seq} is not a retained checkpoint", file=sys.stderr)
            return EXIT_USAGE
        removed = log.prune_before(match[0])
    print(f"pruned {removed} records before checkpoint {args.before_seq}")
    return EXIT_OK


def format_ms(at_ms: int | None) -> str:
    """Epoch ms as ISO 8601 UTC with milliseconds; ``-`` for none."""
    if at_ms is None:
        return "-"
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(record: Record) -> str:
    """One line for a person: kind, actor, the salient data, the reason."""
    event = record.event
    data = json.dumps(event.data, sort_keys=True, separators=(",", ":"))
    reason = f" — {event.reason}" if event.reason else ""
    return f"{event.kind}\t{event.actor}\t{data}{reason}"


def conformance_json(result: Conformance) -> dict[str, Any]:
    return {
        "at_ms": result.at_ms,
        "at": format_ms(result.at_ms),
        "group": result.group,
        "total": result.total,
        "conformant": result.conformant,
        "ratio": result.ratio,
        "instances": [
            {
                "instance_id": i.instance_id,
                "group": i.group,
                "image": i.image,
                "state": i.state,
                "since_ms": i.since_ms,
                "seq": i.seq,
            }
            for i in result.instances
        ],
    }


def history_json(history: InstanceHistory) -> dict[str, Any]:
    return {
        "instance_id": history.instance_id,
        "launched_ms": history.launched_ms,
        "retired_ms": history.retired_ms,
        "records": [r.to_json() for r in history.records],
    }


def image_json(image: ImageHistory) -> dict[str, Any]:
    return {
        "image": image.image,
        "digest": image.digest,
        "registered_ms": image.registered_ms,
        "registered_by": image.registered_by,
        "runs": [
            {
                "instance_id": r.instance_id,
                "group": r.group,
                "from_ms": r.from_ms,
                "until_ms": r.until_ms,
            }
            for r in image.runs
        ],
        "desired": [
            {
                "group": d.group,
                "from_ms": d.from_ms,
                "until_ms": d.until_ms,
                "actor": d.actor,
                "how": d.how,
            }
            for d in image.desired
        ],
    }


def _ratio_line(result: Conformance) -> str:
    ratio = "n/a" if result.ratio is None else f"{result.ratio:.4f}"
    scope = f"group {result.group}" if result.group else "fleet"
    return (
        f"{scope} at {format_ms(result.at_ms)}: {result.conformant}/{result.total} conformant"
        f" (ratio {ratio})"
    )


def _write_csv(result: Conformance, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["instance_id", "group", "image", "state", "since_ms", "since"])
    for i in result.instances:
        writer.writerow(
            [i.instance_id, i.group, i.image, i.state, i.since_ms, format_ms(i.since_ms)]
        )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _now_ms() -> int:
    return int(time.time() * 1000)
