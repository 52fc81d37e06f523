"""The registry and group rules every store applies the same way, written once.

A registered image is immutable (its reference and digest never point at
another manifest), creating a group twice is idempotent only when nothing
differs, and every write of a row is a compare-and-set on its version. The
in-memory, SQLite and PostgreSQL stores call these functions, so the rules and
their errors read the same everywhere.
"""

from __future__ import annotations

from typing import Protocol

from controller.domain.model import Group, ImageRecord, Instance, InstanceState
from controller.errors import AlreadyExistsError, ConflictError


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
    if existing != group:  # the row version is not part of a value's equality
        raise AlreadyExistsError(
            f"group {group.name!r} already exists with image {existing.desired_image_ref} "
            f"and mode {existing.mode.value}",
            reason="group_conflict",
        )
    return False


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


def check_version(kind: str, key: str, stored: Versioned | None, expected: int) -> int:
    """The version a compare-and-set write stores: ``expected + 1``.

    ``stored`` is the stored row (None when there is none), ``expected`` the version
    the writer read (0 for a row it believes new). Raises ConflictError when they
    differ: someone else wrote the row since, so nothing may be written.
    """
    current = 0 if stored is None else stored.version
    if current != expected:
        raise ConflictError(
            f"{kind} {key[:200]!r} changed since it was read (stored version "
            f"{current}, read {expected}); nothing was written",
            reason="conflict",
        )
    return expected + 1


def is_deletable(stored: Instance | None, read: Instance) -> bool:
    """Whether ``read`` may leave the live store: retired, and stored as it was read."""
    return (
        stored is not None
        and stored.state is InstanceState.RETIRED
        and stored.version == read.version
    )
