"""The fuzz suite's controller and hypothesis profile.

One real controller per module (SQLite in a temporary directory, gRPC on
127.0.0.1 port 0) with an image registered, a group declared and a few
instances reporting, so generated requests reach past the first lookups.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.baked import Baked
from tests.fixtures.clock import FakeClock
from tests.fixtures.running import RunningController


@pytest.fixture(scope="module")
def baked() -> Baked:
    return Baked()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, baked: Baked) -> Iterator[RunningController]:
    """The controller with image ``web`` registered, group ``web`` and instances i-1..i-3."""
    data: Path = tmp_path_factory.mktemp("fuzz") / "data"
    controller = RunningController(data, FakeClock(), max_message_bytes=256 * 1024)
    controller.start()
    controller.register(baked)
    controller.create_group("web", baked)
    for n in (1, 2, 3):
        controller.report(baked.header(instance_id=f"i-{n}"))
    yield controller
    controller.close()
