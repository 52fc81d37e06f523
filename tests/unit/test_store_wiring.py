"""Choosing the store: SQLite by default, PostgreSQL by config, the DSN never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import load_config
from controller.errors import ConfigError, ControllerError
from controller.ports import SoleController
from controller.store.sqlite import SqliteStore
from controller.store.wiring import open_store

SECRET_DSN = "host=db user=corral password=hunter2"


def test_sqlite_is_the_default_and_leads_alone(tmp_path: Path) -> None:
    store, leadership = open_store(load_config(overrides={"data_dir": str(tmp_path)}))
    try:
        assert isinstance(store, SqliteStore)
        assert isinstance(leadership, SoleController)
    finally:
        store.close()


def test_postgres_dsn_comes_from_the_environment_and_is_never_shown() -> None:
    config = load_config(env={"CORRAL_STORE": "postgres", "CORRAL_POSTGRES_DSN": SECRET_DSN})
    assert (config.store, config.postgres_dsn) == ("postgres", SECRET_DSN)
    assert "hunter2" not in repr(config)


def test_unknown_store_is_refused() -> None:
    with pytest.raises(ConfigError, match="store"):
        load_config(env={"CORRAL_STORE": "mysql"})


def test_postgres_without_a_dsn_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="CORRAL_POSTGRES_DSN"):
        open_store(load_config(env={"CORRAL_STORE": "postgres"}))


def test_an_unreachable_database_is_reported_without_the_dsn() -> None:
    dsn = "host=127.0.0.1 port=1 user=corral password=hunter2 connect_timeout=1"
    config = load_config(env={"CORRAL_STORE": "postgres", "CORRAL_POSTGRES_DSN": dsn})
    with pytest.raises(ControllerError, match="cannot connect to PostgreSQL") as raised:
        open_store(config)
    assert "hunter2" not in str(raised.value)
