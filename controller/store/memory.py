"""The in-memory store: the default for tests and a reference for the contract suite.

Nothing survives the process; ``durable`` is meaningless here. Audit events go
to a :class:`~controller.audit.MemoryAuditLog`, appended all-or-none under the
store's lock before the dicts change, so a write and its records happen together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from controller.audit import AuditLog, Event, MemoryAuditLog
from controller.domain.model import Group, ImageRecord, Instance
from controller.domain.replacement_record import ReplacementRecord
from controller.errors import NotFoundError
from controller.store.cached import CachedReads
from controller.store.rules import check_new_image, check_same_group


class MemoryStore(CachedReads):
    """Dicts behind a lock, implementing :class:`controller.ports.Store`."""

    def __init__(self, *, audit: MemoryAuditLog | None = None) -> None:
        self._lock = threading.Lock()
        self._audit = audit if audit is not None else MemoryAuditLog()
        self._images_by_ref: dict[str, ImageRecord] = {}
        self._images_by_digest: dict[str, ImageRecord] = {}
        self._manifests: dict[str, bytes] = {}
        self._groups: dict[str, Group] = {}
        self._instances: dict[str, Instance] = {}
        self._replacements: dict[str, ReplacementRecord] = {}

    def add_image(
        self, image: ImageRecord, manifest: bytes, *, audit: Sequence[Event] = ()
    ) -> bool:
        with self._lock:
            existing = check_new_image(
                image, self._images_by_ref.get(image.ref), self._images_by_digest.get(image.digest)
            )
            if existing:
                return False
            self._audit.append_all(audit)
            self._manifests.setdefault(image.manifest_digest, manifest)
            self._images_by_ref[image.ref] = image
            self._images_by_digest[image.digest] = image
            return True

    def get_manifest(self, manifest_digest: str) -> bytes:
        try:
            return self._manifests[manifest_digest]
        except KeyError:
            raise NotFoundError(f"no manifest {manifest_digest} is stored") from None

    def add_group(self, group: Group, *, audit: Sequence[Event] = ()) -> bool:
        with self._lock:
            existing = self._groups.get(group.name)
            if existing is not None:
                return check_same_group(group, existing)
            self._audit.append_all(audit)
            self._groups[group.name] = group
            return True

    def update_group(self, group: Group, *, audit: Sequence[Event] = ()) -> None:
        with self._lock:
            if group.name not in self._groups:
                raise NotFoundError(f"group {group.name!r} is not declared")
            self._audit.append_all(audit)
            self._groups[group.name] = group

    def save_instance(
        self, instance: Instance, *, durable: bool = True, audit: Sequence[Event] = ()
    ) -> None:
        if instance.group not in self._groups:
            raise NotFoundError(f"group {instance.group!r} is not declared")
        if not audit:  # the hot path: no lock, no audit work
            self._instances[instance.id] = instance
            return
        with self._lock:
            self._audit.append_all(audit)
            self._instances[instance.id] = instance

    def add_replacement(self, record: ReplacementRecord, *, audit: Sequence[Event] = ()) -> bool:
        with self._lock:
            if record.group not in self._groups:
                raise NotFoundError(f"group {record.group!r} is not declared")
            if record.replacement_id in self._replacements:
                return False
            self._audit.append_all(audit)
            self._replacements[record.replacement_id] = record
            return True

    def update_replacement(self, record: ReplacementRecord, *, audit: Sequence[Event] = ()) -> None:
        with self._lock:
            if record.replacement_id not in self._replacements:
                raise NotFoundError(f"no replacement {record.replacement_id!r} is recorded")
            self._audit.append_all(audit)
            self._replacements[record.replacement_id] = record

    def audit_log(self) -> AuditLog:
        return self._audit

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
