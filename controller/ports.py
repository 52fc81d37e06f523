"""The controller's ports: what the engine needs from time, storage and leadership.

Adapters: :mod:`controller.store` (memory, SQLite, PostgreSQL stores; the
PostgreSQL advisory-lock leadership), :class:`SoleController` here (the clock is ``time.time``:
:class:`agent.clock.Clock`), and the tests' fake clock (``tests/fixtures/clock.py``).
Two ports live with the code that owns their contract: the audit log's
(:class:`controller.audit.ports.AuditLog`, which the audit package implements
without depending on the rest of the controller) and the providers'
(:class:`controller.providers.base.Provider`, an abstract base class with the
behaviour every provider shares). One contract suite per port runs against every
adapter (``tests/contract/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from controller.audit.ports import AuditLog
from controller.audit.record import Event
from controller.domain.model import Group, ImageRecord, Instance
from controller.domain.replacement_record import ReplacementRecord


class Store(Protocol):
    """The controller's state: the image registry, groups and instances.

    Reads never raise for a missing item (they return None); writes are atomic:
    a write that raises has changed nothing.

    Every write of a group, an instance or a replacement is a compare-and-set on
    the row's ``version``: the value written must carry the version it was read
    at (0 for a row the writer believes new), the store writes it as version + 1
    and returns what it stored. When the stored row changed since (another
    replica, a sweep, a report), the write raises ConflictError and changes
    nothing; nobody ever overwrites a row they did not read. On top of that, the
    SQL stores refuse in the database itself any update that would take a
    tainted, replacing or retired instance back.

    Storage faults (disk full, I/O error, a locked or lost database) raise
    UnavailableError: retry later, nothing was written.

    Every durable write takes ``audit``: the audit events describing it. They are
    appended to the store's audit log in the same transaction as the write, and
    only when the write changes something (an idempotent no-op appends nothing).
    A write whose audit append fails has changed nothing either. Raises AuditError
    (from :mod:`controller.audit`) when an event cannot be recorded.
    """

    def add_image(
        self, image: ImageRecord, manifest: bytes, *, audit: Sequence[Event] = ()
    ) -> bool:
        """Register ``image`` with its encoded manifest.

        Returns True when created, False when the very same image is already
        registered (idempotent). Raises AlreadyExistsError when a different image holds
        the same ref or digest.
        """
        ...

    def get_image_by_ref(self, ref: str) -> ImageRecord | None: ...

    def get_image_by_digest(self, digest: str) -> ImageRecord | None: ...

    def list_images(self) -> list[ImageRecord]:
        """Every registered image, oldest first."""
        ...

    def get_manifest(self, manifest_digest: str) -> bytes:
        """The encoded manifest stored under ``manifest_digest``. Raises NotFoundError."""
        ...

    def add_group(self, group: Group, *, audit: Sequence[Event] = ()) -> bool:
        """Declare ``group``: True when created, False when the same group exists.

        Raises AlreadyExistsError when a group of that name exists with other settings.
        """
        ...

    def update_group(self, group: Group, *, audit: Sequence[Event] = ()) -> Group:
        """Compare-and-set the stored group of that name; returns it as stored.

        Raises NotFoundError, ConflictError.
        """
        ...

    def get_group(self, name: str) -> Group | None: ...

    def list_groups(self) -> list[Group]:
        """Every group, by name."""
        ...

    def get_instance(self, instance_id: str) -> Instance | None: ...

    def list_instances(self, group: str = "") -> list[Instance]:
        """Instances (of ``group``, or all when empty), by id."""
        ...

    def save_instance(
        self, instance: Instance, *, durable: bool = True, audit: Sequence[Event] = ()
    ) -> Instance:
        """Create (``version`` 0) or compare-and-set the instance record; returns it as
        stored. Readers see it at once. Raises ConflictError when the row changed since
        ``instance`` was read (or exists, for a new one).

        With ``durable`` the record is on stable storage when this returns; without,
        it may be written behind (a steady-state heartbeat) and is on storage after
        the next :meth:`flush`. A save with ``audit`` events is always durable.
        Raises NotFoundError when its group is not declared.
        """
        ...

    def delete_retired(self, instance: Instance) -> bool:
        """Remove a retired instance from the live store (compare-and-set on its version;
        its history stays in the audit log). Returns False when the row changed since it
        was read, or is not retired, and then changes nothing."""
        ...

    def add_replacement(self, record: ReplacementRecord, *, audit: Sequence[Event] = ()) -> bool:
        """Record a replacement durably: True when created, False when a row with its id
        (the idempotency key) already exists — then nothing is changed.

        Raises NotFoundError when its group is not declared.
        """
        ...

    def update_replacement(
        self, record: ReplacementRecord, *, audit: Sequence[Event] = ()
    ) -> ReplacementRecord:
        """Durably compare-and-set the row with that id; returns it as stored.

        Raises NotFoundError, ConflictError.
        """
        ...

    def get_replacement(self, replacement_id: str) -> ReplacementRecord | None: ...

    def list_replacements(self, group: str = "") -> list[ReplacementRecord]:
        """Replacements (of ``group``, or all when empty), oldest recorded first."""
        ...

    def audit_log(self) -> AuditLog:
        """The audit log the writes append to, for reading (auditors' queries, verify).

        Its own ``append``, ``checkpoint`` and ``prune_before`` are not for the
        controller's orchestration: events reach the log through the writes above.
        """
        ...

    def flush(self) -> None:
        """Write every record saved without ``durable`` to stable storage."""
        ...

    def close(self) -> None:
        """Flush and release the store. Safe to call twice."""
        ...


class Leadership(Protocol):
    """Whether this controller runs the replacement engine for its store right now."""

    def is_leader(self) -> bool: ...

    def changed_groups(self) -> set[str]:
        """Groups whose instances other replicas changed since the last call ("" means
        every group, e.g. just after this replica became leader). The leader plans
        them at its next tick, as if nudged locally."""
        ...


class SoleController:
    """The embedded case: one controller per SQLite store, always the leader."""

    def is_leader(self) -> bool:
        return True

    def changed_groups(self) -> set[str]:
        return set()  # every change is made here and nudges the replacer itself
