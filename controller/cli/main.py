"""``corral``: one command line for image builders, operators and auditors.

Each subcommand lives in its own module under ``controller.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a
function ``(args) -> int``. Exit codes: 0 success/conformant, 1 drift found or
the operation was refused, 2 usage or input error, 69 controller unavailable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add subcommands, in the order `corral --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "controller.cli.bake",
    "controller.cli.image",
    "controller.cli.images",
    "controller.cli.group",
    "controller.cli.fleet",
    "controller.cli.taint",
    "controller.cli.rollout",
    "controller.cli.demo",
    "controller.cli.audit",
    "controller.cli.certs",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral", description="Keep a fleet immutable: bake, verify, watch, replace."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
