"""The replacement engine's decisions: what to do next for one group, given what is stored.

:func:`plan` is pure. It reads the group, its instances and its replacement
records as the store holds them, and the time, and returns the next
:mod:`actions <controller.domain.replacement_actions>` — at most one per replacement and per
instance. The shell (one orchestration module) applies them in order, each as
"persist the intent, call the provider, persist the outcome", then plans again.
The safety rules live here, so each holds whatever the shell or a crash does:

- **Recorded before any provider call.** A new replacement is only ever a
  :class:`StartReplacement` (a row in phase ``recorded``); the provider is called
  on a later plan, for a row that exists.
- **Budget.** At most ``budget`` replacements of a group are in flight (every
  phase but ``done``/``abandoned``/``cancelled``); default
  ``max(1, floor(10% of the group))``, never 0; an explicit group setting wins.
- **Surge or terminate first**, as the provider declares: with ``surge`` the old
  instance is terminated only after its replacement reported conformant.
- **Startup grace and backoff.** A launched replacement that is not conformant
  within the grace, or that is tainted, is a failed attempt; the next attempt
  waits ``base * factor**(n-1)`` (capped); after ``max_attempts`` the
  replacement is abandoned with an alert. Its key is derived from the taint, so
  an abandoned replacement is never restarted for the same taint: no loops.
- **Observe mode replaces nothing**: the plan is at most a report (:class:`Hold`).
- **Silence is not drift.** ``unknown`` instances are never replaced, and when
  more than ``partition_unknown_share`` of the group is unknown (a controller
  restart, a network cut) the whole group holds.
- **Circuit breaker** (:mod:`controller.domain.breaker`): while open, nothing new
  starts; replacements in flight may finish.

Phases: surge ``recorded → launching → waiting_conformant → terminating_old →
done``; terminate first ``recorded → terminating_old → launching →
waiting_conformant → done``. A failed attempt goes to ``backoff`` (its instance is
discarded), then back to ``launching`` or on to ``abandoned``. A rollout
replacement not yet started on its instance is ``cancelled`` when a rollback made
the instance's image desired again.

Why a replay never launches twice: every launch carries a *launch key*,
``<idempotency key>-a<attempt>``, derived only from the stored row, and the
shell persists ``phase=launching`` with that key and ``launch_issued_at`` before
it calls the provider. A row found in ``launching`` without a new instance may
therefore have launched or not; the plan never guesses: it asks the shell to
look the key up at the provider (:class:`LookupLaunch`) and decides on the answer
only if it was taken after the last launch was issued. Found → adopt that
instance; nothing there → launch again under the *same* key (or count a failed
attempt if the shell recorded a provider error). Providers also treat the key
as find-or-create, so even a lookup that raced a launch cannot make a second
instance. A new attempt after a failure gets a new key because the failed
instance is discarded first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from controller.domain import breaker, scale
from controller.domain.model import GroupMode, Instance, InstanceState
from controller.domain.refs import image_identity
from controller.domain.replacement_actions import (
    Abandon,
    Action,
    AdoptLaunch,
    Cancel,
    Complete,
    Discard,
    Hold,
    HoldReason,
    Kind,
    Launch,
    LookupLaunch,
    MarkFailed,
    OpenBreaker,
    Phase,
    StartReplacement,
    Strategy,
    Terminate,
)
from controller.domain.views import GroupView, InstanceView, ReplacementView

_S = InstanceState
ACTIVE_PHASES = frozenset(
    {
        Phase.RECORDED,
        Phase.LAUNCHING,
        Phase.WAITING_CONFORMANT,
        Phase.TERMINATING_OLD,
        Phase.BACKOFF,
    }
)


@dataclass(frozen=True)
class ReplacementSettings:
    """The engine's knobs; the defaults are the safe ones."""

    budget_share: float = 0.10
    """Default budget: this share of the group, rounded down, at least 1."""
    startup_grace_seconds: float = 600.0
    """How long a launched replacement has to report conformant."""
    listening_since: float = 0.0
    """When this controller started listening: the startup grace counts from here at
    the earliest, so time the controller was down counts against no instance."""
    backoff_base_seconds: float = 30.0
    """Wait after the first failed attempt."""
    backoff_factor: float = 2.0
    """Each further failure multiplies the wait by this."""
    backoff_cap_seconds: float = 1800.0
    """The wait never exceeds this."""
    max_attempts: int = 3
    """Launch attempts before the replacement is abandoned (with an alert)."""
    partition_unknown_share: float = 0.20
    """Hold the whole group when strictly more than this share is unknown."""
    breaker: breaker.BreakerSettings = field(default_factory=breaker.BreakerSettings)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")


def launch_key(idempotency_key: str, attempt: int) -> str:
    """The key a launch attempt carries to the provider (as a label or tag)."""
    return f"{idempotency_key}-a{attempt}"


def taint_key(instance: InstanceView) -> str:
    """The idempotency key of the replacement for ``instance``'s current taint."""
    taint_id = instance.taint_id
    if taint_id is None:
        taint_id = str(round((instance.tainted_at or 0.0) * 1000))
    return f"rpl-{instance.instance_id}-{taint_id}"


def rollout_key(instance_id: str, generation: int) -> str:
    """The idempotency key of the rollout replacement of ``instance_id`` for a generation."""
    return f"rol-{instance_id}-g{generation}"


def budget(group: GroupView, live_instances: int, settings: ReplacementSettings) -> int:
    """How many replacements the group may have in flight (never 0)."""
    if group.max_concurrent is not None:
        return group.max_concurrent
    size = group.size or live_instances
    return max(1, int(Fraction(repr(settings.budget_share)) * size))


def backoff_delay(failed_attempt: int, settings: ReplacementSettings) -> float:
    """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
    exponent = max(0, failed_attempt - 1)
    delay = settings.backoff_base_seconds
    for _ in range(exponent):
        delay *= settings.backoff_factor
        if delay >= settings.backoff_cap_seconds:
            break
    return float(min(delay, settings.backoff_cap_seconds))


def plan(
    group: GroupView,
    instances: Sequence[InstanceView],
    replacements: Sequence[ReplacementView],
    now: float,
    settings: ReplacementSettings,
) -> list[Action]:
    """The next actions for ``group``; see the module docstring for the rules."""
    live = [i for i in instances if i.state is not _S.RETIRED]
    active = [r for r in replacements if r.phase in ACTIVE_PHASES]
    if group.mode is not GroupMode.ENFORCE:
        waiting = _candidates(group, live, active, replacements)
        if not waiting and not active:
            return []
        ids = tuple(i.instance_id for i, _, _ in waiting)
        detail = (
            f"observe mode: {len(ids)} instance(s) would be replaced, "
            f"{len(active)} replacement(s) paused"
        )
        return [Hold(group=group.name, reason=HoldReason.OBSERVE, detail=detail, instances=ids)]

    # A replacement still starting up is judged by its startup grace, not counted as a
    # sign of a partition: otherwise one silent new instance in a small group holds the
    # group, and the hold keeps its grace from ever failing it.
    starting = {r.new_instance_id for r in active if r.new_instance_id is not None}
    settled = [i for i in live if i.instance_id not in starting]
    unknown = sum(1 for i in settled if i.state is _S.UNKNOWN)
    share = Fraction(repr(settings.partition_unknown_share))
    if settled and Fraction(unknown, len(settled)) > share:
        detail = (
            f"{unknown} of {len(settled)} instances are unknown (silent): the fleet looks "
            "partitioned, so nothing is replaced until they report again"
        )
        return [Hold(group=group.name, reason=HoldReason.PARTITIONED, detail=detail)]

    actions: list[Action] = []
    size = group.size or len(live)
    taint_times = [i.tainted_at for i in instances if i.tainted_at is not None]
    verdict = breaker.evaluate(group.breaker, taint_times, size, now, settings.breaker)
    if verdict.opened:
        actions.append(
            OpenBreaker(group=group.name, state=verdict.state, reason=verdict.state.reason)
        )

    by_id = {i.instance_id: i for i in instances}
    for replacement in active:
        action = _advance(replacement, group, by_id, now, settings)
        if action is not None:
            actions.append(action)

    if verdict.state.open:
        if not verdict.opened:
            detail = f"circuit breaker open ({verdict.state.reason}); run `corral group resume`"
            actions.append(Hold(group=group.name, reason=HoldReason.BREAKER_OPEN, detail=detail))
        return actions

    free = budget(group, len(live), settings) - len(active)
    candidates = _candidates(group, live, active, replacements)[: max(0, free)]
    for instance, kind, key in candidates:
        actions.append(
            StartReplacement(
                group=group.name,
                instance_id=instance.instance_id,
                kind=kind,
                idempotency_key=key,
                strategy=group.strategy,
                image_ref=group.desired_image,
            )
        )
    if group.fill_to_size:
        free -= len(candidates)
        actions.extend(scale.starts(group, live, replacements, free=free))
    return actions


def _candidates(
    group: GroupView,
    live: Sequence[InstanceView],
    active: Sequence[ReplacementView],
    replacements: Sequence[ReplacementView],
) -> list[tuple[InstanceView, Kind, str]]:
    """Instances that need a replacement nobody started yet: taints (oldest first),
    then instances on another image than the desired one (by id)."""
    busy = {r.instance_id for r in active}
    busy.update(r.new_instance_id for r in active if r.new_instance_id is not None)
    seen_keys = {r.idempotency_key for r in replacements}
    desired = image_identity(group.desired_image)
    tainted: list[tuple[InstanceView, Kind, str]] = []
    stale: list[tuple[InstanceView, Kind, str]] = []
    for instance in live:
        if instance.instance_id in busy:
            continue
        if instance.state is _S.TAINTED:
            key = taint_key(instance)
            if key not in seen_keys:
                tainted.append((instance, Kind.TAINT, key))
        elif instance.state is _S.CONFORMANT and image_identity(instance.image) != desired:
            key = rollout_key(instance.instance_id, group.generation)
            if key not in seen_keys:
                stale.append((instance, Kind.ROLLOUT, key))
    tainted.sort(key=lambda c: (c[0].tainted_at or 0.0, c[0].instance_id))
    stale.sort(key=lambda c: c[0].instance_id)
    return tainted + stale


def _advance(
    r: ReplacementView,
    group: GroupView,
    by_id: dict[str, InstanceView],
    now: float,
    settings: ReplacementSettings,
) -> Action | None:
    """The one next step of an in-flight replacement, or None to wait."""
    rid = r.replacement_id
    if r.phase is Phase.RECORDED:
        if _superseded(r, group, by_id):
            return Cancel(replacement_id=rid, reason="instance already runs the desired image")
        if r.strategy is Strategy.SURGE or r.kind is Kind.SCALE:
            return _launch(r, group, attempt=1)
        return Terminate(replacement_id=rid, instance_id=r.instance_id)
    if r.phase is Phase.TERMINATING_OLD:
        if not r.old_terminated:
            return Terminate(replacement_id=rid, instance_id=r.instance_id)
        if r.strategy is Strategy.SURGE:
            return Complete(replacement_id=rid, new_instance_id=r.new_instance_id)
        return _launch(r, group, attempt=r.attempt + 1)
    if r.phase is Phase.LAUNCHING:
        return _resolve_launch(r, group, now, settings)
    if r.phase is Phase.WAITING_CONFORMANT:
        return _judge_new_instance(r, by_id, now, settings)
    # BACKOFF
    if r.new_instance_id is not None:
        return Discard(replacement_id=rid, instance_id=r.new_instance_id)
    if r.retry_at is None or r.attempt >= settings.max_attempts:
        return Abandon(
            replacement_id=rid,
            instance_id=r.instance_id,
            reason=f"no conformant replacement after {r.attempt} attempt(s): "
            f"{r.launch_error or 'see the replacement history'}",
        )
    if now < r.retry_at:
        return None
    if not r.old_terminated and _superseded(r, group, by_id):
        return Cancel(replacement_id=rid, reason="instance already runs the desired image")
    return _launch(r, group, attempt=r.attempt + 1)


def _launch(r: ReplacementView, group: GroupView, *, attempt: int) -> Launch:
    return Launch(
        replacement_id=r.replacement_id,
        launch_key=launch_key(r.idempotency_key, attempt),
        image_ref=group.desired_image,
        attempt=attempt,
    )


def _resolve_launch(
    r: ReplacementView, group: GroupView, now: float, settings: ReplacementSettings
) -> Action:
    """A launch was issued; did the provider act on it? Never guess: look it up."""
    if r.new_instance_id is not None:
        return AdoptLaunch(replacement_id=r.replacement_id, new_instance_id=r.new_instance_id)
    key = launch_key(r.idempotency_key, r.attempt)
    lookup = r.lookup
    fresh = (
        lookup is not None
        and lookup.launch_key == key
        and (r.launch_issued_at is None or lookup.checked_at > r.launch_issued_at)
    )
    if lookup is None or not fresh:
        return LookupLaunch(replacement_id=r.replacement_id, launch_key=key)
    if lookup.instance_id is not None:
        return AdoptLaunch(replacement_id=r.replacement_id, new_instance_id=lookup.instance_id)
    if r.launch_error is not None:
        return _failed(r, f"launch failed: {r.launch_error}", now, settings)
    # Nothing under the key and no error: the controller stopped before the call.
    return _launch(r, group, attempt=r.attempt)


def _judge_new_instance(
    r: ReplacementView, by_id: dict[str, InstanceView], now: float, settings: ReplacementSettings
) -> Action | None:
    new = by_id.get(r.new_instance_id or "")
    if new is not None and new.state is _S.CONFORMANT:
        if r.strategy is Strategy.SURGE and r.kind is not Kind.SCALE:
            return Terminate(replacement_id=r.replacement_id, instance_id=r.instance_id)
        return Complete(replacement_id=r.replacement_id, new_instance_id=r.new_instance_id)
    if new is not None and new.state in (_S.TAINTED, _S.REPLACING):
        return _failed(r, "the new instance is itself tainted", now, settings)
    if new is not None and new.state is _S.RETIRED:
        return _failed(r, "the new instance disappeared before it conformed", now, settings)
    issued = r.launch_issued_at if r.launch_issued_at is not None else now
    started = max(issued, settings.listening_since)
    if now - started >= settings.startup_grace_seconds:
        return _failed(
            r,
            f"not conformant within the {settings.startup_grace_seconds:g} s startup grace",
            now,
            settings,
        )
    return None


def _failed(
    r: ReplacementView, reason: str, now: float, settings: ReplacementSettings
) -> MarkFailed:
    retry_at = None
    if r.attempt < settings.max_attempts:
        retry_at = now + backoff_delay(r.attempt, settings)
    return MarkFailed(replacement_id=r.replacement_id, reason=reason, retry_at=retry_at)


def _superseded(r: ReplacementView, group: GroupView, by_id: dict[str, InstanceView]) -> bool:
    """A rollout replacement whose instance now runs the desired image (after a rollback)."""
    if r.kind is not Kind.ROLLOUT:
        return False
    old = by_id.get(r.instance_id)
    return old is not None and image_identity(old.image) == image_identity(group.desired_image)


def instance_view(instance: Instance) -> InstanceView:
    """The plan's view of a stored :class:`~controller.domain.model.Instance`."""
    taint = instance.taint
    return InstanceView(
        instance_id=instance.id,
        state=instance.state,
        image=instance.image_digest or instance.image_ref,
        tainted_at=taint.at if taint is not None else None,
    )
