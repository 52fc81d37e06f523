"""What a SQLite error means for the caller: a storage fault to retry, or a bug.

A full disk, an I/O error, a lock held too long or a damaged page are faults of
the storage under the controller, not of the request: they leave the store as
:class:`~controller.errors.UnavailableError` (gRPC ``UNAVAILABLE``), so an agent
keeps its report queued and retries. A constraint or programming error is a
bug (or the database refusing a forbidden change, such as a taint going back)
and propagates unchanged, to be answered ``INTERNAL``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from controller.errors import UnavailableError

_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def is_storage_fault(error: sqlite3.Error) -> bool:
    """True for errors of the storage (full, I/O, locked, damaged), not of the SQL."""
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(error, _BUGS)


def storage_error(error: sqlite3.Error) -> UnavailableError:
    """The UnavailableError for a storage fault, with SQLite's own words."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else "storage error"
    return UnavailableError(
        f"the controller's store cannot be written or read ({detail}); retry later",
        reason="store_unavailable",
    )


@contextmanager
def storage_faults() -> Iterator[None]:
    """Storage faults raised in the block leave it as UnavailableError."""
    try:
        yield
    except sqlite3.Error as error:
        if is_storage_fault(error):
            raise storage_error(error) from error
        raise
