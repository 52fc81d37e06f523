"""The registry and group rules every store applies the same way, written once.

A registered image is immutable (its reference and digest never point at
another manifest) and creating a group twice is idempotent only when nothing
differs. The in-memory, SQLite and PostgreSQL stores call these functions, so
the rules and their errors read the same everywhere.
"""

from __future__ import annotations

from controller.domain.model import Group, ImageRecord
from controller.errors import AlreadyExistsError


def check_new_image(
    image: ImageRecord, by_ref: ImageRecord | None, by_digest: ImageRecord | None
) -> bool:
    """True when ``image`` is already registered as is; raises AlreadyExistsError on a clash."""
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
