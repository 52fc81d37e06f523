"""The `corral` command table: every command is reachable, and a bake loads only what it needs."""

from __future__ import annotations

import argparse
import subprocess
import sys

from controller.cli.main import COMMANDS, build_parser


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_the_command_table_names_exactly_the_commands_the_modules_add() -> None:
    assert _choices(build_parser()) == set(COMMANDS)


def test_each_command_is_added_by_the_module_the_table_names() -> None:
    for command in COMMANDS:
        assert command in _choices(build_parser(command)), command


def test_bake_and_verify_do_not_load_grpc() -> None:
    probe = (
        "import sys; from controller.cli.main import build_parser; "
        "build_parser('bake'); build_parser('verify'); print('grpc' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
