"""A short soak as a correctness test: a few hundred simulated agents, about half a minute.

``tests/bench/bench_soak.py`` with small numbers, against one controller on
SQLite and two replicas on PostgreSQL. No timing is asserted: every report is
answered OK, every agent is heard, the controllers' memory is sampled and
printed, and every drifted canary is picked up by the replacement engine.
"""

from __future__ import annotations

import pytest

from tests.bench.bench_soak import SoakOptions, report, run_soak
from tests.fixtures.postgres import require_postgres

AGENTS = 300


def _soak(store: str) -> None:
    options = SoakOptions(agents=AGENTS, seconds=30, interval=2.0, store=store, canaries=2)
    result = run_soak(options)
    print(report(result, options))
    assert not result.errors, result.errors
    assert result.reports >= AGENTS  # every agent reported, most of them many times
    assert all(len(samples) >= 2 for samples in result.rss.values())
    assert len(result.rss) == (1 if store == "sqlite" else 2)
    assert len(result.lags) == options.canaries and None not in result.lags, result.lags


@pytest.mark.slow
def test_short_soak_on_sqlite() -> None:
    _soak("sqlite")


@pytest.mark.slow
@pytest.mark.postgres
def test_short_soak_on_two_postgres_replicas() -> None:
    require_postgres()
    _soak("postgres")
