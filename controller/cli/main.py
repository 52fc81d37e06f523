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

from agent.version import corral_version

# Each command, and the module that adds it, in the order `corral --help` lists them.
COMMANDS: dict[str, str] = {
    "bake": "controller.cli.bake",
    "verify": "controller.cli.bake",
    "image": "controller.cli.image",
    "group": "controller.cli.group",
    "fleet": "controller.cli.fleet",
    "taint": "controller.cli.taint",
    "rollout": "controller.cli.rollout",
    "rollback": "controller.cli.rollout",
    "demo": "controller.demo.command",
    "audit": "controller.cli.audit",
    "certs": "controller.cli.certs",
    "backup": "controller.cli.backup",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a known ``command``, only that command's module is imported.

    Importing every subcommand (gRPC, the audit log, the demo) costs a bake or a
    verify on an image-build host about 0.2 s and 18 MB for nothing.
    """
    parser = argparse.ArgumentParser(
        prog="corral", description="Keep a fleet immutable: bake, verify, watch, replace."
    )
    parser.add_argument("--version", action="version", version=f"corral {corral_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    module = COMMANDS.get(command or "")
    for name in (module,) if module else COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments[0] if arguments else None)
    args = parser.parse_args(arguments)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
