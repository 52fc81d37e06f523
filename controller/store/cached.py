"""The read side of the stores that serve every record from memory, written once.

The in-memory store keeps nothing else; the SQLite store loads every record at
open and writes through to its file. Both answer reads from the same dicts in
the same order, so those answers come from this one base class. (The
PostgreSQL store reads through to the database instead: replicas share it.)
"""

from __future__ import annotations

from controller.domain.model import Group, ImageRecord, Instance
from controller.domain.replacement_record import ReplacementRecord


class CachedReads:
    """Store reads from dicts a subclass fills and keeps up to date."""

    _images_by_ref: dict[str, ImageRecord]
    _images_by_digest: dict[str, ImageRecord]
    _groups: dict[str, Group]
    _instances: dict[str, Instance]
    _replacements: dict[str, ReplacementRecord]

    def get_image_by_ref(self, ref: str) -> ImageRecord | None:
        return self._images_by_ref.get(ref)

    def get_image_by_digest(self, digest: str) -> ImageRecord | None:
        return self._images_by_digest.get(digest)

    def list_images(self) -> list[ImageRecord]:
        return sorted(self._images_by_ref.values(), key=lambda i: (i.registered_at, i.ref))

    def get_group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def list_groups(self) -> list[Group]:
        return [self._groups[name] for name in sorted(self._groups)]

    def get_instance(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def list_instances(self, group: str = "") -> list[Instance]:
        # A copy of the values: a heartbeat may save an instance meanwhile, without a lock.
        return sorted(
            (i for i in list(self._instances.values()) if not group or i.group == group),
            key=lambda i: i.id,
        )

    def get_replacement(self, replacement_id: str) -> ReplacementRecord | None:
        return self._replacements.get(replacement_id)

    def list_replacements(self, group: str = "") -> list[ReplacementRecord]:
        return [r for r in list(self._replacements.values()) if not group or r.group == group]
