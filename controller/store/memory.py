"""The in-memory store: the default for tests and a reference for the contract suite.

Nothing survives the process; ``durable`` is meaningless here. Every write is a
compare-and-set on the row's version under the store's lock, as in the SQL stores. Audit events go
to a :class:`~controller.audit.MemoryAuditLog`, appended all-or-none under the
store's lock before the dicts change, so a write and its records happen together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

from controller.audit import AuditLog, Event, MemoryAuditLog
from controller.domain.model import Group, ImageRecord, Instance
from controller.domain.replacement_record import ReplacementRecord
from controller.errors import NotFoundError
from controller.store.cached import CachedReads
from controller.store.rules import check_new_image, check_same_group, check_version, is_deletable


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
            self._groups[group.name] = replace(group, version=1)
            return True

    def update_group(self, group: Group, *, audit: Sequence[Event] = ()) -> Group:
        with self._lock:
            stored = self._groups.get(group.name)
            if stored is None:
                raise NotFoundError(f"group {group.name!r} is not declared")
            version = check_version("group", group.name, stored, group.version)
            self._audit.append_all(audit)
            saved = self._groups[group.name] = replace(group, version=version)
            return saved

    def save_instance(
        self, instance: Instance, *, durable: bool = True, audit: Sequence[Event] = ()
    ) -> Instance:
        if instance.group not in self._groups:
            raise NotFoundError(f"group {instance.group!r} is not declared")
        with self._lock:
            stored = self._instances.get(instance.id)
            version = check_version("instance", instance.id, stored, instance.version)
            self._audit.append_all(audit)
            saved = self._instances[instance.id] = replace(instance, version=version)
            return saved

    def delete_retired(self, instance: Instance) -> bool:
        with self._lock:
            stored = self._instances.get(instance.id)
            if not is_deletable(stored, instance):
                return False
            del self._instances[instance.id]
            return True

    def add_replacement(self, record: ReplacementRecord, *, audit: Sequence[Event] = ()) -> bool:
        with self._lock:
            if record.group not in self._groups:
                raise NotFoundError(f"group {record.group!r} is not declared")
            if record.replacement_id in self._replacements:
                return False
            self._audit.append_all(audit)
            self._replacements[record.replacement_id] = replace(record, version=1)
            return True

    def update_replacement(
        self, record: ReplacementRecord, *, audit: Sequence[Event] = ()
    ) -> ReplacementRecord:
        with self._lock:
            stored = self._replacements.get(record.replacement_id)
            if stored is None:
                raise NotFoundError(f"no replacement {record.replacement_id!r} is recorded")
            version = check_version("replacement", record.replacement_id, stored, record.version)
            self._audit.append_all(audit)
            saved = self._replacements[record.replacement_id] = replace(record, version=version)
            return saved

    def audit_log(self) -> AuditLog:
        return self._audit

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
