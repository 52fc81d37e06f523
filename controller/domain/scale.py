"""Scale to the desired size: launch the capacity a group is missing, through the same engine.

A group declared with ``size = N`` (and a provider) is brought up to N
instances by the controller itself: that is how ``corral demo`` gets its fleet,
and how a group refills after an instance is discarded. A missing instance is a
replacement of kind ``scale`` with no old instance: it is recorded before the
provider is called, launched under a launch key, counted in the budget, held by
observe mode, a partition or an open breaker, and done once the new instance
reports conformant — every rule of :mod:`controller.domain.replacement` applies.

Counting: every live instance that no in-flight replacement involves counts one,
and every in-flight replacement counts one (it ends with exactly one instance),
so a surge (old and new both alive) or a terminate-first replacement (neither
alive for a while) never looks like missing capacity. Tainted instances count:
they are replaced one for one. Scaling down is not done here (an operator
terminates instances; corral never removes capacity on its own).

Keys: ``scl-<group>-g<generation>-<n>``, where n counts the scale-ups already
recorded in that generation, so a replayed start finds its row and a finished
one is never reused. No loops: once a scale-up of the current generation is
abandoned, no further scale-up starts until the next rollout or rollback.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.domain.replacement_actions import Kind, Phase, StartReplacement
from controller.domain.views import GroupView, InstanceView, ReplacementView

_FINISHED = frozenset({Phase.DONE, Phase.ABANDONED, Phase.CANCELLED})


def scale_key(group: str, generation: int, number: int) -> str:
    """The idempotency key of the ``number``-th scale-up of ``group`` in ``generation``."""
    return f"scl-{group}-g{generation}-{number}"


def expected_instances(
    live: Sequence[InstanceView], replacements: Sequence[ReplacementView]
) -> int:
    """How many instances the group will have once every in-flight replacement ends."""
    active = [r for r in replacements if r.phase not in _FINISHED]
    involved = {r.instance_id for r in active if r.instance_id}
    involved.update(r.new_instance_id for r in active if r.new_instance_id)
    return sum(1 for i in live if i.instance_id not in involved) + len(active)


def starts(
    group: GroupView,
    live: Sequence[InstanceView],
    replacements: Sequence[ReplacementView],
    *,
    free: int,
) -> list[StartReplacement]:
    """Scale-ups to record now: the missing capacity, at most ``free`` (the unused budget)."""
    if group.size <= 0 or free <= 0:
        return []
    prefix = scale_key(group.name, group.generation, 0)[:-1]
    mine = [
        r for r in replacements if r.kind is Kind.SCALE and r.idempotency_key.startswith(prefix)
    ]
    if any(r.phase is Phase.ABANDONED for r in mine):
        return []
    missing = group.size - expected_instances(live, replacements)
    first = len(mine) + 1
    return [
        StartReplacement(
            group=group.name,
            instance_id="",
            kind=Kind.SCALE,
            idempotency_key=scale_key(group.name, group.generation, first + n),
            strategy=group.strategy,
            image_ref=group.desired_image,
        )
        for n in range(min(missing, free))
    ]
