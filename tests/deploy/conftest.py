"""Fixtures for the deploy/ checks (helpers live in deploy_support.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.deploy.deploy_support import require_tool


@pytest.fixture
def tool() -> Callable[[str], str]:
    """Return the path of a tool, or skip the test naming what to install."""
    return require_tool
