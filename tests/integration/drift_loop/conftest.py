"""A real controller in-process for the drift-loop tests (:mod:`tests.fixtures.running`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.baked import Baked
from tests.fixtures.clock import FakeClock
from tests.fixtures.running import RunningController


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def running(tmp_path: Path, clock: FakeClock) -> Iterator[RunningController]:
    controller = RunningController(tmp_path / "data", clock, max_message_bytes=256 * 1024)
    controller.start()
    yield controller
    controller.close()


@pytest.fixture
def baked() -> Baked:
    return Baked()


@pytest.fixture
def web(running: RunningController, baked: Baked) -> Baked:
    """The image registered and group ``web`` declared with it."""
    running.register(baked)
    running.create_group("web", baked)
    return baked
