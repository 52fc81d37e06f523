"""The store every store contract runs against: memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.ports import Store
from controller.store.memory import MemoryStore
from controller.store.sqlite import SqliteStore
from tests.fixtures.postgres import fresh_schema, postgres_dsn


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        from controller.store.postgres import PostgresStore  # noqa: PLC0415

        with fresh_schema() as schema:
            adapter: Store = PostgresStore(postgres_dsn(), schema=schema)
            yield adapter
            adapter.close()
        return
    adapter = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path)
    yield adapter
    adapter.close()
