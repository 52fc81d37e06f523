"""The wire contract follows buf's STANDARD lint rules (protos/buf.yaml).

STANDARD checks, among others, that the package is versioned and matches the
directory, and that every RPC has its own Request/Response messages.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def test_buf_lint_finds_nothing() -> None:
    buf = shutil.which("buf")
    if buf is None:
        pytest.skip("buf is not installed (npm install -g @bufbuild/buf; .ci/setup-system does)")
    result = subprocess.run(
        [buf, "lint"], cwd=PROTOS, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
