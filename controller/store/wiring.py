"""Opens the store the config names, with the leadership that goes with it.

SQLite is the embedded default: one controller, always the leader. PostgreSQL
is the scale-out option: replicas share the database and an advisory lock
elects the one that runs the replacement engine. The PostgreSQL modules (and
psycopg) are imported only when configured, so the default install needs
neither.
"""

from __future__ import annotations

from pathlib import Path

from controller.config import ControllerConfig
from controller.errors import ConfigError
from controller.ports import Leadership, SoleController, Store
from controller.store.sqlite import SqliteStore


def open_store(config: ControllerConfig, *, init: bool = False) -> tuple[Store, Leadership]:
    """The configured store and who leads on it.

    ``init`` starts a fresh SQLite store where the data dir holds a missing, empty
    or damaged one (set aside, never deleted); see :mod:`controller.store.sqlite_open`.

    Raises ConfigError for PostgreSQL without a DSN or without psycopg, and
    ControllerError when the database cannot be reached (the DSN is never in it).
    """
    if config.store != "postgres":
        store = SqliteStore(Path(config.data_dir), init=init)
        return store, SoleController()
    if not config.postgres_dsn:
        raise ConfigError(
            'store = "postgres" needs postgres_dsn (or the CORRAL_POSTGRES_DSN environment)'
        )
    try:
        from controller.store.postgres import PostgresStore  # noqa: PLC0415
        from controller.store.postgres_leadership import PostgresLeadership  # noqa: PLC0415
    except ImportError as error:
        raise ConfigError(
            f'store = "postgres" needs psycopg: pip install "corral[postgres]" ({error})'
        ) from None
    leadership: Leadership = PostgresLeadership(config.postgres_dsn)
    return PostgresStore(config.postgres_dsn), leadership
