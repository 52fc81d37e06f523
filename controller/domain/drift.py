"""Drift decisions: what one agent report means for its instance.

:func:`decide` is pure: given the instance as stored (or None on its first
report), its group, the group's desired image, the image the agent says it runs
(None when that digest is not registered), the report and the time, it returns a
:class:`Decision` — the new instance record and what happened — or raises a
:class:`~controller.errors.ControllerError` saying why the report is refused.
A refused report changes nothing.

What a report says about its image is checked against the registry: a
registered digest must be reported under the reference it was registered as
(else the report is refused, FAILED_PRECONDITION), and an unregistered digest
is image drift recorded under the digest alone, so no record ever names an
unregistered reference as what an instance runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from agent.manifest.report import Evidence, Report
from controller.domain.model import DriftKind, Group, ImageRecord, Instance, InstanceState, Taint
from controller.domain.refs import image_identity
from controller.domain.states import transition
from controller.errors import AlreadyExistsError, FailedPreconditionError

_S = InstanceState
#: Prefix of the actor of a taint an agent reported: ``agent:<instance>``.
AGENT_ACTOR = "agent:"


class Outcome(Enum):
    """How a report was taken (the ``result`` label of ``corral_reports_total``)."""

    ACCEPTED = "accepted"
    DRIFT = "drift"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Decision:
    """The outcome of one report.

    ``durable`` is True when the new record changes something that must survive
    a crash before the agent hears back (a new instance, a state change, a taint);
    a steady-state heartbeat may be written behind.
    """

    instance: Instance
    outcome: Outcome
    new_taint: Taint | None = None
    durable: bool = False
    evidence_wanted: bool = False


def decide(
    instance: Instance | None,
    *,
    group: Group | None,
    desired: ImageRecord | None,
    running: ImageRecord | None,
    report: Report,
    now: float,
) -> Decision:
    """Decide what ``report`` means; raises FailedPreconditionError or AlreadyExistsError.

    A new taint's actor is ``agent:<instance>``, as in its audit record: under
    mutual TLS the security interceptor has proved that the certificate names
    that instance before any of this runs.
    """
    if group is None:
        raise FailedPreconditionError(
            f"group {report.group!r} is not declared: declare it in the controller's "
            f"config file or run `corral group create {report.group} --image REF`",
            reason="undeclared_group",
        )
    if instance is not None:
        _check_sequence(instance, report)
        if _is_duplicate(instance, report):
            return Decision(
                instance=instance,
                outcome=Outcome.DUPLICATE,
                evidence_wanted=_evidence_wanted(instance, running, report),
            )
    if running is None:
        if report.image_ref != report.image_digest:
            report = replace(report, image_ref=report.image_digest)
    elif running.ref != report.image_ref:
        raise FailedPreconditionError(
            f"image_ref {report.image_ref!r} does not name the image registered with digest "
            f"{running.digest} (registered as {running.ref!r})",
            reason="image_ref_mismatch",
        )
    if desired is None:
        raise FailedPreconditionError(
            f"group {group.name!r} wants image {group.desired_image_ref!r}, which is not "
            "registered: run `corral image register DIR` with its bake output",
            reason="desired_unregistered",
        )
    base = instance or Instance(
        id=report.instance_id, group=report.group, state=_S.PENDING, first_seen=now
    )
    updated = heard(base, report, now=now)
    drift = _drift(group, desired, running, report)
    if drift is None:
        if base.state in (_S.PENDING, _S.UNKNOWN):
            updated = transition(updated, _S.CONFORMANT)
        return Decision(
            instance=updated,
            outcome=Outcome.ACCEPTED,
            durable=instance is None or updated.state != base.state,
        )
    new_taint = None
    if base.state in (_S.PENDING, _S.UNKNOWN, _S.CONFORMANT):
        kind, reason = drift
        new_taint = Taint(kind=kind, reason=reason, actor=AGENT_ACTOR + report.instance_id, at=now)
        updated = replace(transition(updated, _S.TAINTED), taint=new_taint)
    return Decision(
        instance=updated,
        outcome=Outcome.DRIFT,
        new_taint=new_taint,
        durable=instance is None or new_taint is not None,
        evidence_wanted=_evidence_wanted(updated, running, report),
    )


def heard(instance: Instance, report: Report, *, now: float) -> Instance:
    """``instance`` as ``report`` describes it, heard at ``now`` (state unchanged).

    Built field by field rather than with :func:`dataclasses.replace`, which costs
    three times as much on the path every heartbeat takes; a unit test checks that
    every field of :class:`Instance` is carried over.
    """
    return Instance(
        id=instance.id,
        group=instance.group,
        state=instance.state,
        image_ref=report.image_ref,
        image_digest=report.image_digest,
        root=report.root,
        first_seen=instance.first_seen,
        last_report=now,
        seq=report.seq,
        boot_id=report.boot_id,
        scanned_at_ms=report.scanned_at_ms,
        suspicious=instance.suspicious,
        taint=instance.taint,
        footprint=report.footprint,
        replaces=instance.replaces,
        version=instance.version,
    )


def attach_evidence(instance: Instance, evidence: Evidence, *, verified: bool) -> Instance:
    """``instance`` with ``evidence`` recorded on its file-drift taint, if it has none yet.

    The first evidence is kept: it says why the instance was tainted. Complete,
    empty, unverified evidence is the agent's answer to ``evidence_wanted``
    (:func:`controller.domain.evidence.check_evidence` passed it): it has no
    changes against its own baseline, so that baseline and the registered
    manifest disagree; the taint records that and evidence is not asked again.
    """
    taint = instance.taint
    if (
        taint is None
        or taint.kind != DriftKind.FILE
        or taint.changes
        or taint.evidence_verified
        or taint.baseline_mismatch
    ):
        return instance
    mismatch = not evidence.changes and not evidence.truncated and not verified
    return replace(
        instance,
        taint=replace(
            taint,
            changes=evidence.changes,
            evidence_verified=verified,
            evidence_truncated=evidence.truncated,
            baseline_mismatch=mismatch,
        ),
    )


def mark_suspicious(instance: Instance) -> Instance:
    """``instance`` flagged because its agent sent evidence inconsistent with its root."""
    return instance if instance.suspicious else replace(instance, suspicious=True)


def _check_sequence(instance: Instance, report: Report) -> None:
    if instance.group != report.group:
        raise FailedPreconditionError(
            f"instance {instance.id} belongs to group {instance.group!r}, not {report.group!r}",
            reason="group_mismatch",
        )
    if instance.state == _S.RETIRED:
        raise FailedPreconditionError(
            f"instance {instance.id} is retired: its agent should stop reporting",
            reason="retired",
        )
    if report.boot_id == instance.boot_id:
        if report.seq < instance.seq:
            raise FailedPreconditionError(
                f"stale report: seq {report.seq} is older than seq {instance.seq} "
                f"already received for boot {report.boot_id}",
                reason="stale",
            )
        if report.seq == instance.seq and not _is_duplicate(instance, report):
            raise AlreadyExistsError(
                f"seq {report.seq} of boot {report.boot_id} was already reported with "
                "a different image or root",
                reason="conflict",
            )
    elif report.scanned_at_ms < instance.scanned_at_ms:
        raise FailedPreconditionError(
            f"stale report: boot {report.boot_id} scanned before the latest report "
            f"(boot {instance.boot_id})",
            reason="stale",
        )


def _is_duplicate(instance: Instance, report: Report) -> bool:
    return (
        report.boot_id == instance.boot_id
        and report.seq == instance.seq
        and report.root == instance.root
        and report.image_digest == instance.image_digest
    )


def _drift(
    group: Group, desired: ImageRecord, running: ImageRecord | None, report: Report
) -> tuple[DriftKind, str] | None:
    if running is None:
        return DriftKind.IMAGE, f"image digest {report.image_digest} is not registered"
    if running.digest != desired.digest and not _desired_before(group, running):
        return (
            DriftKind.IMAGE,
            f"runs image {running.ref}, but group {group.name} wants {desired.ref} "
            "and never wanted that image",
        )
    if report.root != running.root:
        return DriftKind.FILE, f"files differ from image {running.ref}"
    return None


def _desired_before(group: Group, running: ImageRecord) -> bool:
    """True when ``group`` wanted ``running`` before (its instances are rolled, not tainted).

    After a rollout an instance on the previous image is not drifted: the
    replacement engine replaces it as a ``rollout``, within the budget. Only an
    image the group never desired is image drift.
    """
    identity = image_identity(running.ref)
    return any(
        image_identity(ref) == identity for ref in (*group.image_history, *group.past_images)
    )


def _evidence_wanted(instance: Instance, running: ImageRecord | None, report: Report) -> bool:
    taint = instance.taint
    return (
        running is not None
        and report.root != running.root
        and taint is not None
        and taint.kind == DriftKind.FILE
        and not taint.changes
        and not taint.evidence_verified
        and not taint.baseline_mismatch
    )
