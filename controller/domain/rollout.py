"""Rollout and rollback: moving a group's desired image, by digest, on an operator's word.

Only the desired image changes here. The instances follow through the normal
replacement path (:mod:`controller.domain.replacement` treats an instance on
another image as a ``rollout`` replacement, within the same budget), so a
rollout is exactly as safe as a replacement. Nothing here reacts to an image
being registered: a new image never rolls out by itself.

Rules:

- ``rollout`` accepts only a pinned (``name@sha256:<64 hex>`` or provider id),
  registered reference; otherwise it refuses with a message that says how to pin
  or register it. The reference is stored in canonical form (the tag dropped).
- The previous desired image is pushed on the group's history. ``rollback`` pops
  it: rolling back twice goes two images back (the bad image is not a rollback
  target), like an undo stack. History keeps the last ``HISTORY_LIMIT`` images.
- Rolling out the image already desired changes nothing (``changed=False``), so
  a retried command is harmless.
- Every change bumps the group's ``generation``, which names the rollout
  replacements it causes (a later rollout to the same image starts afresh).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from controller.domain.model import Group
from controller.domain.refs import FIND_HINT, PinKind, PinnedRef, image_identity, require_pinned
from controller.errors import FailedPreconditionError, NotFoundError

HISTORY_LIMIT = 32


class ImageNotRegisteredError(NotFoundError):
    """The pinned image to roll out (or back to) is not in the image registry."""


class NothingToRollBackError(FailedPreconditionError):
    """The group has no previous desired image."""


class Change(Enum):
    """What moved the desired image (an audit event's action)."""

    ROLLOUT = "rollout"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class DesiredImage:
    """A group's desired image and where it came from."""

    group: str
    image: str
    """The desired image: a canonical pinned reference."""
    history: tuple[str, ...] = ()
    """Previous desired images, oldest first."""
    generation: int = 0

    @classmethod
    def of(cls, group: Group, *, generation: int = 0) -> DesiredImage:
        """The desired image of a stored :class:`~controller.domain.model.Group`."""
        return cls(
            group=group.name,
            image=group.desired_image_ref,
            history=group.image_history,
            generation=generation,
        )


@dataclass(frozen=True)
class GroupUpdate:
    """What to store for the group (and write to the audit log when ``changed``)."""

    group: str
    change: Change
    desired_image: str
    previous_image: str
    history: tuple[str, ...]
    generation: int
    changed: bool = True


def rollout(group: DesiredImage, image_ref: str, registered_images: Iterable[str]) -> GroupUpdate:
    """Make ``image_ref`` the group's desired image.

    Raises UnpinnedReferenceError / InvalidReferenceError (with how to pin it) and
    ImageNotRegisteredError.
    """
    target = _registered(require_pinned(image_ref), registered_images)
    if image_identity(target) == image_identity(group.image):
        return GroupUpdate(
            group=group.group,
            change=Change.ROLLOUT,
            desired_image=group.image,
            previous_image=group.image,
            history=group.history,
            generation=group.generation,
            changed=False,
        )
    history = (*group.history, group.image)[-HISTORY_LIMIT:] if group.image else group.history
    return GroupUpdate(
        group=group.group,
        change=Change.ROLLOUT,
        desired_image=target,
        previous_image=group.image,
        history=history,
        generation=group.generation + 1,
    )


def rollback(group: DesiredImage, *, registered_images: Iterable[str] | None = None) -> GroupUpdate:
    """Make the previous desired image desired again (pop it from the history).

    Raises NothingToRollBackError when there is none, and ImageNotRegisteredError
    when ``registered_images`` is given and no longer holds it.
    """
    if not group.history:
        raise NothingToRollBackError(
            f"group {group.group!r} has no previous image to roll back to: it has only "
            f"ever wanted {group.image!r}. Roll out a pinned image instead: "
            f"`corral rollout {group.group} NAME@sha256:<64 hex>` {FIND_HINT}",
            reason="no_history",
        )
    target = group.history[-1]
    if registered_images is not None:
        target = _registered(require_pinned(target), registered_images)
    return GroupUpdate(
        group=group.group,
        change=Change.ROLLBACK,
        desired_image=target,
        previous_image=group.image,
        history=group.history[:-1],
        generation=group.generation + 1,
    )


def _registered(pinned: PinnedRef, registered_images: Iterable[str]) -> str:
    """The canonical form of ``pinned`` if the registry holds it under that name."""
    others: list[str] = []
    for text in registered_images:
        try:
            known = require_pinned(text)
        except ValueError:
            continue
        if known.pin != pinned.pin:
            continue
        if pinned.kind is PinKind.PROVIDER_ID or known.name == pinned.name:
            return str(pinned)
        others.append(str(known))
    hint = f" It is registered as {', '.join(sorted(others))}." if others else ""
    raise ImageNotRegisteredError(
        f"image {str(pinned)!r} is not registered.{hint} Register an image with "
        "`corral image register DIR` before rolling it out; registered images are "
        f"listed by `corral image list`",
        reason="unregistered_image",
    )
