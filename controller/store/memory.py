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
from controller.errors import AlreadyExistsError, NotFoundError


class MemoryStore:
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

    def get_image_by_ref(self, ref: str) -> ImageRecord | None:
        return self._images_by_ref.get(ref)

    def get_image_by_digest(self, digest: str) -> ImageRecord | None:
        return self._images_by_digest.get(digest)

    def list_images(self) -> list[ImageRecord]:
        return sorted(self._images_by_ref.values(), key=lambda i: (i.registered_at, i.ref))

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

    def get_group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def list_groups(self) -> list[Group]:
        return [self._groups[name] for name in sorted(self._groups)]

    def get_instance(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def list_instances(self, group: str = "") -> list[Instance]:
        return sorted(
            (i for i in self._instances.values() if not group or i.group == group),
            key=lambda i: i.id,
        )

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

    def get_replacement(self, replacement_id: str) -> ReplacementRecord | None:
        return self._replacements.get(replacement_id)

    def list_replacements(self, group: str = "") -> list[ReplacementRecord]:
        return [r for r in list(self._replacements.values()) if not group or r.group == group]

    def audit_log(self) -> AuditLog:
        return self._audit

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def check_new_image(
    image: ImageRecord, by_ref: ImageRecord | None, by_digest: ImageRecord | None
) -> bool:
    """True when ``image`` is already registered as is; raises AlreadyExistsError on a clash.

    Shared by every store so the immutability rule reads the same everywhere.
    """
    for existing, key in ((by_ref, "reference"), (by_digest, "digest")):
        if existing is not None and not existing.same_identity(image):
            raise AlreadyExistsError(
                f"image {key} {image.ref if key == 'reference' else image.digest} is already "
                f"registered with manifest {existing.manifest_digest} (as {existing.ref}); "
                "a registered image is immutable: bake a new version instead",
                reason="image_conflict",
            )
    return by_ref is not None and by_digest is not None


def check_same_group(group: Group, existing: Group) -> bool:
    """False when ``group`` equals ``existing`` (idempotent create); raises AlreadyExistsError."""
    if existing != group:
        raise AlreadyExistsError(
            f"group {group.name!r} already exists with image {existing.desired_image_ref} "
            f"and mode {existing.mode.value}",
            reason="group_conflict",
        )
    return False
