"""Which replica runs the replacement engine: a PostgreSQL advisory lock held by one session.

Every replica asks on each replacer tick (:meth:`PostgresLeadership.is_leader`).
A follower tries ``pg_try_advisory_lock`` on its own dedicated connection; the
leader checks that the connection (and so the session that holds the lock) is
still alive. The lock belongs to the session: when the leader's process dies,
or its connection drops, the server releases it and the next follower to tick
takes over. A leader whose probe fails stops being leader at once, before it
tries to reconnect.

The lock key is derived from the schema name, so fleets (or tests) in separate
schemas of one database elect separately. TCP keepalives on both ends bound how
long the server keeps a lock for a leader that vanished without closing its
socket (a partition or a powered-off host): about ten seconds, instead of the
kernel default of two hours. During that window the old leader may finish its
current tick; every replacement step is idempotent by its key, so an overlap
repeats no launch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("corral.replacer")
GROUP_CHANNEL = "corral_groups"
"""The PostgreSQL notification channel on which every durable instance change names its
group (payload ``schema/group``): the leader, which may not be the replica that
took the report, plans that group at its next tick instead of at its next sweep."""
Connection = psycopg.Connection[tuple[Any, ...]]

_KEEPALIVE = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "9000",
    "connect_timeout": "5",
}
_SERVER_KEEPALIVE = (
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 2",
)


class PostgresLeadership:
    """:class:`controller.engine.replacer.Leadership` by a session-level advisory lock."""

    def __init__(self, conninfo: str, *, schema: str | None = None, name: str = "replacer") -> None:
        self._conninfo = conninfo
        self._schema = schema
        self._name = f"corral.{name}:"
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._leader = False
        self._prefix = "/"
        self._changed: set[str] = set()

    def is_leader(self) -> bool:
        """True while this replica holds the lock; tries to take it when free."""
        with self._lock:
            try:
                conn = self._connection()
                if self._leader:
                    conn.execute("SELECT 1")
                else:
                    row = conn.execute(
                        "SELECT pg_try_advisory_lock(hashtextextended(%s || current_schema(), 0))",
                        (self._name,),
                    ).fetchone()
                    if row is not None and row[0]:
                        conn.execute(f"LISTEN {GROUP_CHANNEL}")
                        schema = conn.execute("SELECT current_schema()").fetchone()
                        self._prefix = f"{schema[0] if schema else ''}/"
                        self._changed = {""}
                        self._leader = True
                        log.info("this replica is now the leader: it runs the replacement engine")
            except psycopg.Error as error:
                self._lost(error)
            return self._leader

    def changed_groups(self) -> set[str]:
        """Groups named on :data:`GROUP_CHANNEL` since the last call (leader only)."""
        with self._lock:
            changed, self._changed = self._changed, set()
            if not self._leader or self._conn is None:
                return set()
            try:
                for note in self._conn.notifies(timeout=0):
                    if note.payload.startswith(self._prefix):
                        changed.add(note.payload[len(self._prefix) :])
            except psycopg.Error as error:
                self._lost(error)
                return set()
            return changed

    def close(self) -> None:
        """Give up the lock (closing the session releases it) so a survivor takes over."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._leader:
                self._leader = False
                log.info("this replica stepped down as leader")

    def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
        conn: Connection = psycopg.connect(
            psycopg.conninfo.make_conninfo(self._conninfo, **_missing(self._conninfo)),
            autocommit=True,
        )
        for statement in _SERVER_KEEPALIVE:
            conn.execute(statement)
        if self._schema:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
        self._conn = conn
        return conn

    def _lost(self, error: psycopg.Error) -> None:
        was_leader, self._leader = self._leader, False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if was_leader:
            log.warning("lost the leader lock (PostgreSQL connection failed: %s)", first)
        else:
            log.debug("cannot try for the leader lock: %s", first)


def _missing(conninfo: str) -> dict[str, str]:
    """The keepalive settings the operator's DSN does not set itself."""
    given = psycopg.conninfo.conninfo_to_dict(conninfo)
    return {key: value for key, value in _KEEPALIVE.items() if key not in given}
