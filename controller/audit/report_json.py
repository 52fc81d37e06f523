"""The conformance report for machines: ``corral audit report --format json``.

The same facts as the HTML page, as one JSON object whose schema is
versioned by ``corral_audit_report`` (docs/audit.md lists every field).
Times are epoch milliseconds (``*_ms``) with an ISO 8601 twin where a person
reads them; shares are fractions in [0, 1] or null when nothing existed.
"""

from __future__ import annotations

from typing import Any

from controller.audit.chain import Checkpoint, VerifyResult
from controller.audit.report_facts import (
    BreakerEvent,
    DesiredChange,
    Evidence,
    GroupShare,
    ImageFacts,
    Replacement,
    Report,
    TaintFact,
)
from controller.audit.report_format import iso
from controller.audit.report_proof import Proof

SCHEMA_VERSION = 1


def report_json(report: Report, proof: Proof, *, generated_ms: int) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    median, worst, timed = report.taint_to_replacement()
    totals = report.state_ms
    return {
        "corral_audit_report": SCHEMA_VERSION,
        "generated_ms": generated_ms,
        "generated": iso(generated_ms),
        "period": {
            "from_ms": report.from_ms,
            "to_ms": report.to_ms,
            "from": iso(report.from_ms),
            "to": iso(report.to_ms),
            "group": report.group,
        },
        "instances": list(report.instances),
        "summary": {
            "instances_seen": len(report.instances),
            "share_conformant": report.share,
            "conformant_ms": totals["conformant"],
            "existing_ms": sum(totals.values()),
            "state_ms": totals,
            "taints": {"total": len(report.taints), **report.taints_by_kind},
            "replacements": {
                "launched": len(report.replacements),
                "conformant": report.replaced_conformant,
            },
            "taint_to_replacement_conformant_ms": {
                "median": median,
                "worst": worst,
                "count": timed,
                "not_replaced": len(report.taints) - timed,
            },
            "breaker_openings": report.breaker_openings,
            "suspicious_evidence": report.suspicious,
            "manual_taints": [
                {
                    "seq": t.seq,
                    "at_ms": t.at_ms,
                    "at": iso(t.at_ms),
                    "instance_id": t.instance_id,
                    "group": t.group,
                    "actor": t.actor,
                    "reason": t.reason,
                }
                for t in report.manual_taints
            ],
        },
        "chart": {
            "from_ms": report.chart_from_ms,
            "buckets": report.buckets,
            "bucket_ms": (report.to_ms - report.chart_from_ms) / report.buckets,
        },
        "groups": [_group(g) for g in report.groups],
        "images": [_image(i) for i in report.images],
        "changes": [_change(c) for c in report.changes],
        "breaker": [_breaker(b) for b in report.breaker],
        "taints": [_taint(t) for t in report.taints],
        "replacements": [_replacement(r) for r in report.replacements],
        "coverage": {
            "records": report.coverage.records,
            "first_seq": report.coverage.first_seq,
            "last_seq": report.coverage.last_seq,
            "last_hash": report.coverage.last_hash,
            "first_ms": report.coverage.first_ms,
            "complete": report.coverage.complete,
        },
        "proof": proof_json(proof),
    }


def proof_json(proof: Proof) -> dict[str, Any]:
    return {
        "ok": proof.ok,
        "source": proof.source,
        "checks": [
            {"what": c.what, "describe": c.result.describe(), **verify_json(c.result)}
            for c in proof.checks
        ],
        "head_seq": proof.head_seq,
        "head_hash": proof.head_hash,
        "signing_key_ids": list(proof.signing_key_ids),
        "signatures_checked_with": proof.key_id,
        "checkpoints": [_checkpoint(c) for c in proof.checkpoints],
        "export": proof.export_path,
        "export_sha256": proof.export_sha256,
        "verify_command": proof.command,
    }


def verify_json(result: VerifyResult) -> dict[str, Any]:
    """A verification result as ``corral audit verify --json`` prints it."""
    return {
        "ok": result.ok,
        "checked": result.checked,
        "first_seq": result.first_seq,
        "last_seq": result.last_seq,
        "last_hash": result.last_hash,
        "first_bad_seq": result.first_bad_seq,
        "problem": result.problem,
    }


def _group(share: GroupShare) -> dict[str, Any]:
    return {
        "group": share.group,
        "instances": share.instances,
        "share_conformant": share.share,
        "conformant_ms": share.conformant_ms,
        "existing_ms": share.existing_ms,
        "state_ms": dict(share.state_ms),
        "chart": list(share.buckets),
    }


def _image(image: ImageFacts) -> dict[str, Any]:
    return {
        "image": image.image,
        "digest": image.digest,
        "registered_ms": image.registered_ms,
        "registered_by": image.registered_by,
        "instances": image.instances,
        "runs": [
            {
                "instance_id": r.instance_id,
                "group": r.group,
                "from_ms": r.from_ms,
                "until_ms": r.until_ms,
            }
            for r in image.runs
        ],
        "changes": [c.seq for c in image.changes],
    }


def _change(change: DesiredChange) -> dict[str, Any]:
    return {
        "seq": change.seq,
        "at_ms": change.at_ms,
        "at": iso(change.at_ms),
        "kind": change.kind,
        "group": change.group,
        "from_image": change.from_image,
        "to_image": change.to_image,
        "actor": change.actor,
        "reason": change.reason,
    }


def _breaker(event: BreakerEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at_ms": event.at_ms,
        "at": iso(event.at_ms),
        "group": event.group,
        "opened": event.opened,
        "tainted": event.tainted,
        "size": event.size,
        "actor": event.actor,
        "reason": event.reason,
    }


def _taint(taint: TaintFact) -> dict[str, Any]:
    return {
        "seq": taint.seq,
        "at_ms": taint.at_ms,
        "at": iso(taint.at_ms),
        "instance_id": taint.instance_id,
        "group": taint.group,
        "image": taint.image,
        "kind": taint.kind,
        "source": taint.source,
        "actor": taint.actor,
        "reason": taint.reason,
        "evidence": _evidence(taint.evidence) if taint.evidence is not None else None,
        "replacement": _replacement(taint.replacement) if taint.replacement else None,
        "to_replacement_conformant_ms": taint.to_replacement_ms,
    }


def _evidence(evidence: Evidence) -> dict[str, Any]:
    return {
        "seq": evidence.seq,
        "drift": evidence.drift,
        "added": evidence.added,
        "removed": evidence.removed,
        "modified": evidence.modified,
        "paths": list(evidence.paths),
        "paths_truncated": evidence.paths_truncated,
        "verified": evidence.verified,
    }


def _replacement(replacement: Replacement) -> dict[str, Any]:
    return {
        "instance_id": replacement.instance_id,
        "replaces": replacement.replaces,
        "group": replacement.group,
        "image": replacement.image,
        "launched_ms": replacement.launched_ms,
        "conformant_ms": replacement.conformant_ms,
    }


def _checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "at_ms": checkpoint.at_ms,
        "key_id": checkpoint.key_id,
        "signed": checkpoint.signature is not None,
    }
