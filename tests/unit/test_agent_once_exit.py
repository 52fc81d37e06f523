"""``corral-agent run --once`` exit codes: 0 delivered, 1 refused, 69 never reached.

Driven on the runner harness (fake transport, fake clock), so the "controller
stays away" case waits out its backoffs without sleeping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon.cli import EXIT_REFUSED, EXIT_UNAVAILABLE, build_parser, run_once
from tests.unit.test_agent_runner import Harness


class _RefuseFirst(set[int]):
    """Stands in for the fake transport's refused sequence numbers: the first ``count``."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.left = count

    def __contains__(self, seq: object) -> bool:
        if self.left:
            self.left -= 1
            return True
        return False


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_delivered_report_exits_0(harness: Harness) -> None:
    assert run_once(harness.runner) == 0
    assert len(harness.transport.sent) == 1


def test_a_refused_report_exits_1(harness: Harness) -> None:
    harness.transport.reject = _RefuseFirst(1)
    assert run_once(harness.runner) == EXIT_REFUSED == 1
    assert harness.transport.sent == [] and harness.transport.attempts == 1
    assert harness.metric("corral_agent_reports_total", result="rejected") == 1


def test_an_unreachable_controller_exits_69_after_every_attempt(harness: Harness) -> None:
    harness.transport.down = True
    started = harness.clock()
    assert run_once(harness.runner, attempts=4) == EXIT_UNAVAILABLE == 69
    # The first delivery during the tick, then four more after waiting out the backoff.
    assert harness.transport.attempts == 5
    assert harness.clock() > started
    assert len(harness.runner.outbox) == 1


def test_the_long_running_mode_keeps_going_after_a_refusal(harness: Harness) -> None:
    harness.transport.reject = _RefuseFirst(1)
    harness.runner.tick()
    harness.clock.advance(30)
    harness.runner.tick()
    assert harness.runner.refused == 1
    assert len(harness.transport.sent) == 1  # the next scan's report went out


def test_run_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "1   --once: the controller refused" in out
    assert "69  --once: the controller stayed unreachable" in out
