"""``corral backup --data-dir DIR OUT``: a whole, checked copy of the controller's SQLite store.

Safe while the controller runs (SQLite's online backup API: the write-ahead log
is included). Exit 0 with the copy's size, instance count and audit head; 1
when there is no sound store to copy or the copy cannot be written. Restore:
docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.errors import ControllerError
from controller.store.backup import backup


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backup", help="copy the controller's SQLite store (safe while it runs)"
    )
    parser.add_argument("--data-dir", required=True, type=Path, help="the controller's data dir")
    parser.add_argument("out", type=Path, metavar="OUT", help="the backup file to write")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.set_defaults(handler=_backup)


def _backup(args: argparse.Namespace) -> int:
    try:
        made = backup(args.data_dir, args.out)
    except ControllerError as error:
        print(f"corral backup: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(made.path),
                    "bytes": made.bytes,
                    "instances": made.instances,
                    "audit_seq": made.audit_seq,
                    "audit_head": made.audit_head,
                }
            )
        )
    else:
        print(
            f"backup {made.path}: {made.bytes} bytes, {made.instances} instance(s), "
            f"audit log up to record {made.audit_seq} (head {made.audit_head})"
        )
    return 0
