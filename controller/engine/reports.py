"""The controller's one place for effects: it applies pure decisions.

Each call reads what it needs from the store, asks the pure core
(:mod:`controller.domain`) what to do, then stores the result, counts it and
logs it. A call that raises has stored nothing (except the ``suspicious`` flag
that inconsistent evidence sets, by design). Nothing here knows about gRPC.

Every durable change is stored together with its audit events
(:mod:`controller.audit.trail` says which), in the same store write; a steady
heartbeat (not durable) builds no events at all.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from agent.clock import Clock
from agent.errors import ManifestError
from agent.manifest.format import decode, digest_of
from agent.manifest.report import Evidence, Report
from controller.audit import trail
from controller.audit.record import Event
from controller.domain.drift import Decision, Outcome, attach_evidence, decide, mark_suspicious
from controller.domain.evidence import check_evidence
from controller.domain.model import DriftKind, Group, ImageRecord, Instance, InstanceState, Taint
from controller.domain.states import on_silence, transition
from controller.engine.manifest_cache import ManifestCache
from controller.errors import (
    ConflictError,
    ControllerError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from controller.metrics import ControllerMetrics
from controller.ports import Store

log = logging.getLogger("corral.controller")
_T = TypeVar("_T")
CONFLICT_RETRIES = 4
"""How often a write that lost a compare-and-set race is decided again on the new row."""


class ControllerService:
    """Reports in, decisions applied; images, groups and taints for operators."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        metrics: ControllerMetrics,
        stale_after: float,
        max_clock_skew: float = 300.0,
        retired_retention: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.stale_after = stale_after
        self.max_clock_skew = max_clock_skew
        self.retired_retention = retired_retention
        # Silence is counted from here at the earliest (see states.is_stale).
        self.listening_since = clock()
        self.manifests = ManifestCache(store)
        # Label children made once: the report path must not look them up per call.
        self._outcomes = {
            outcome: metrics.reports.labels(result=outcome.value) for outcome in Outcome
        }
        self._rejected = metrics.reports.labels(result="rejected")
        self._observe_handling = metrics.report_handling.observe
        # Called with a group's name when one of its instances changed state (the
        # replacement engine's nudge); None when nothing listens.
        self.state_listener: Callable[[str], None] | None = None

    # Agent reports ------------------------------------------------------------

    def report(self, report: Report, evidence: Evidence | None = None) -> Decision:
        """Take one agent report (with drift evidence, or None). Raises ControllerError.

        The decision is made on what is stored and written as a compare-and-set: if
        another writer (a sweep, an operator, a replica) changed the instance in
        between, the report is decided again on the new row, a few times at most,
        then answered UNAVAILABLE so the agent retries it.
        """
        started = time.perf_counter()
        try:
            decision = self._decide_again_on_conflict(report, evidence)
        except ControllerError as exc:
            self.count_rejected(exc)
            log.info(
                "report refused: %s",
                exc,
                extra={"instance_id": report.instance_id, "group": report.group},
            )
            raise
        self._outcomes[decision.outcome].inc()
        self._observe_handling(time.perf_counter() - started)
        return decision

    def _decide_again_on_conflict(self, report: Report, evidence: Evidence | None) -> Decision:
        return self._on_fresh_rows(
            lambda: self._report(report, evidence), writer="report", instance_id=report.instance_id
        )

    def _on_fresh_rows(self, attempt: Callable[[], _T], *, writer: str, instance_id: str) -> _T:
        """``attempt()``, read-decide-write, again while its write loses a compare-and-set
        race; after CONFLICT_RETRIES losses, UnavailableError (the caller retries later)."""
        for _ in range(CONFLICT_RETRIES):
            try:
                return attempt()
            except ConflictError:
                self.metrics.write_conflicts.labels(writer=writer).inc()
        raise UnavailableError(
            f"instance {instance_id[:200]!r} is being changed by other writers; retry",
            reason="conflict",
        )

    def count_rejected(self, error: ControllerError) -> None:
        """Count a refused report (also one refused before it reached the service)."""
        self._rejected.inc()
        self.metrics.reports_rejected.labels(reason=error.reason).inc()

    def _report(self, report: Report, evidence: Evidence | None) -> Decision:
        now = self.clock()
        ahead = report.scanned_at_ms / 1000 - now
        if ahead > self.max_clock_skew:
            raise InvalidArgumentError(
                f"scanned_at_ms is {ahead:.0f} s ahead of the controller's clock (more than "
                f"the {self.max_clock_skew:g} s allowed): fix the instance's clock (NTP)",
                reason="clock_skew",
            )
        store = self.store
        instance = store.get_instance(report.instance_id)
        group = store.get_group(report.group)
        running = store.get_image_by_digest(report.image_digest)
        desired = None
        if group is not None:
            desired = store.get_image_by_ref(group.desired_image_ref) or (
                store.get_image_by_digest(group.desired_image_digest)
            )
        decision = decide(
            instance,
            group=group,
            desired=desired,
            running=running,
            report=report,
            now=now,
        )
        updated = decision.instance
        if evidence is not None and running is not None:
            updated = self._check_evidence(instance, updated, running, report, evidence)
            if updated is not decision.instance:
                decision = replace(decision, instance=updated, durable=True, evidence_wanted=False)
        if updated is not instance:
            if decision.durable:
                store.save_instance(updated, audit=self._agent_events(instance, updated))
            else:
                store.save_instance(updated, durable=False)
        if decision.new_taint is not None:
            self._count_taint(updated, decision.new_taint, source="agent")
        elif decision.durable:
            log.info("instance %s", updated.state.value, extra=_fields(updated))
        if decision.durable and self.state_listener is not None:
            self.state_listener(updated.group)
        return decision

    def _check_evidence(
        self,
        stored: Instance | None,
        updated: Instance,
        running: ImageRecord,
        report: Report,
        evidence: Evidence,
    ) -> Instance:
        try:
            verdict = check_evidence(
                self.manifests.index_for(running), evidence, reported_root=report.root
            )
        except InvalidArgumentError:
            self.metrics.evidence_rejected.labels(group=updated.group).inc()
            if stored is not None and not stored.suspicious:
                flagged = mark_suspicious(stored)
                with contextlib.suppress(ConflictError):  # changed meanwhile: flag it next time
                    self.store.save_instance(flagged, audit=self._agent_events(stored, flagged))
            log.warning("inconsistent drift evidence", extra=_fields(updated))
            raise
        return attach_evidence(updated, evidence, verified=verdict.verified)

    def _agent_events(self, before: Instance | None, after: Instance) -> list[Event]:
        return trail.instance_events(
            before,
            after,
            at_ms=trail.ms(self.clock()),
            actor=trail.agent_actor(after.id),
            source="agent",
        )

    # Operators ----------------------------------------------------------------

    def register_image(
        self, image: ImageRecord, manifest: bytes, *, actor: str
    ) -> tuple[ImageRecord, bool]:
        """Register ``image`` after checking its manifest. Returns (record, created)."""
        _check_pinned(image)
        if digest_of(manifest) != image.manifest_digest:
            raise InvalidArgumentError(
                f"manifest bytes hash to {digest_of(manifest)}, not {image.manifest_digest}: "
                "the upload is incomplete or image.json belongs to another bake"
            )
        try:
            decoded = decode(manifest)
        except ManifestError as exc:
            raise InvalidArgumentError(f"manifest rejected: {exc}") from exc
        if decoded.root != image.root or len(decoded.entries) != image.entry_count:
            raise InvalidArgumentError(
                "image.json does not describe this manifest (root or entry count differ)"
            )
        record = replace(image, registered_at=self.clock(), registered_by=actor)
        audit = trail.image_events(record, actor=trail.operator_actor(actor))
        created = self.store.add_image(record, manifest, audit=audit)
        stored = self.store.get_image_by_ref(image.ref) or record
        if created:
            log.info("image registered", extra={"image": image.ref, "actor": actor})
            self._resolve_group_digests(stored)
            self.manifests.warm([stored])
        return stored, created

    def create_group(self, group: Group, *, actor: str = "") -> tuple[Group, bool]:
        """Declare a group whose desired image must be registered. Returns (group, created).

        ``actor`` names the caller when no authenticated identity does.
        """
        image = self.store.get_image_by_ref(group.desired_image_ref)
        if image is None:
            raise FailedPreconditionError(
                f"image {group.desired_image_ref!r} is not registered: run "
                "`corral image register DIR` first"
            )
        group = replace(group, desired_image_digest=image.digest)
        audit = trail.group_events(
            group, at_ms=trail.ms(self.clock()), actor=trail.operator_actor(actor)
        )
        created = self.store.add_group(group, audit=audit)
        if created:
            log.info("group created", extra={"group": group.name, "image": image.ref})
        return self.store.get_group(group.name) or group, created

    def declare_group(self, group: Group) -> None:
        """Declare a group from the config file; its image may be registered later."""
        image = self.store.get_image_by_ref(group.desired_image_ref)
        if image is not None:
            group = replace(group, desired_image_digest=image.digest)
        existing = self.store.get_group(group.name)
        if existing is None:
            self.store.add_group(
                group,
                audit=trail.group_events(
                    group,
                    at_ms=trail.ms(self.clock()),
                    actor=trail.CONTROLLER,
                    reason="declared in the controller's config file",
                ),
            )
        elif existing.desired_image_ref != group.desired_image_ref or existing.mode != group.mode:
            log.warning(
                "group %s in the config file differs from the stored group; the stored "
                "one wins (it may have been rolled out since)",
                group.name,
                extra={"group": group.name},
            )

    def taint(self, instance_id: str, *, reason: str, actor: str) -> Instance:
        """Taint an instance by hand. Idempotent for an instance already tainted."""
        return self._on_fresh_rows(
            lambda: self._taint(instance_id, reason=reason, actor=actor),
            writer="operator",
            instance_id=instance_id,
        )

    def _taint(self, instance_id: str, *, reason: str, actor: str) -> Instance:
        instance = self.store.get_instance(instance_id)
        if instance is None:
            raise NotFoundError(f"no instance {instance_id!r} has reported")
        if instance.state in (InstanceState.TAINTED, InstanceState.REPLACING):
            return instance
        new_taint = Taint(kind=DriftKind.MANUAL, reason=reason, actor=actor, at=self.clock())
        updated = replace(transition(instance, InstanceState.TAINTED), taint=new_taint)
        audit = trail.instance_events(
            instance,
            updated,
            at_ms=trail.ms(new_taint.at),
            actor=trail.operator_actor(actor),
            source="operator",
        )
        saved = self.store.save_instance(updated, audit=audit)
        self._count_taint(saved, new_taint, source="operator")
        return saved

    def sweep_stale(self) -> int:
        """Mark instances silent for longer than ``stale_after`` as unknown; returns how many.

        Each mark is a compare-and-set on the row the sweep read: an instance that
        reported, was tainted or changed in any way since is left as it is.
        """
        now = self.clock()
        marked = 0
        for instance in self.store.list_instances():
            silent = on_silence(
                instance,
                now=now,
                stale_after=self.stale_after,
                listening_since=self.listening_since,
            )
            if silent is not None:
                audit = trail.instance_events(
                    instance,
                    silent,
                    at_ms=trail.ms(now),
                    actor=trail.CONTROLLER,
                    source="controller",
                    reason=f"no report for more than {self.stale_after:g} s",
                )
                try:
                    self.store.save_instance(silent, audit=audit)
                except ConflictError:
                    self.metrics.write_conflicts.labels(writer="sweep").inc()
                    continue  # it changed since the sweep read it: its writer decided
                log.warning("instance silent, now unknown", extra=_fields(silent))
                marked += 1
        return marked

    def sweep_retired(self) -> int:
        """Remove retired instances not heard from for ``retired_retention``; returns how many.

        Their rows (and evidence) leave the live store; the audit log keeps their
        history. Each removal is a compare-and-set on the row read.
        """
        cutoff = self.clock() - self.retired_retention
        removed = 0
        for instance in self.store.list_instances():
            heard = max(instance.last_report, instance.first_seen)
            if instance.state is InstanceState.RETIRED and heard < cutoff:
                removed += self.store.delete_retired(instance)
        if removed:
            log.info("removed %d retired instance(s) from the live store", removed)
        return removed

    def _resolve_group_digests(self, image: ImageRecord) -> None:
        for group in self.store.list_groups():
            if group.desired_image_ref == image.ref and not group.desired_image_digest:
                with contextlib.suppress(ConflictError):  # whoever changed it saw the image
                    self.store.update_group(replace(group, desired_image_digest=image.digest))

    def _count_taint(self, instance: Instance, taint: Taint, *, source: str) -> None:
        self.metrics.taints.labels(group=instance.group, source=source).inc()
        self.metrics.drift_detections.labels(group=instance.group, kind=taint.kind.value).inc()
        log.warning("instance tainted: %s", taint.reason, extra=_fields(instance))
        if self.state_listener is not None:
            self.state_listener(instance.group)


def _check_pinned(image: ImageRecord) -> None:
    name, at, digest = image.ref.partition("@")
    pinned = (at and name and digest == image.digest) or image.ref == image.digest
    if not pinned:
        raise InvalidArgumentError(
            f"image reference {image.ref!r} is not pinned to digest {image.digest!r}: "
            "use NAME@DIGEST (or the immutable provider id itself)"
        )


def _fields(instance: Instance) -> dict[str, str]:
    return {"instance_id": instance.id, "group": instance.group, "image": instance.image_ref}
