"""The service applies decisions: what it stores, how durably, and what it counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from agent.manifest.diff import Change, ChangeKind, diff
from agent.manifest.format import Entry, EntryType, Manifest, digest_of, root_of
from agent.manifest.policy import Policy
from agent.manifest.report import Evidence, Footprint, Report
from controller.audit.record import Event
from controller.domain.drift import heard
from controller.domain.model import DriftKind, Group, ImageRecord, Instance, InstanceState, Taint
from controller.engine.reports import ControllerService
from controller.errors import InvalidArgumentError
from controller.metrics import ControllerMetrics
from controller.store.memory import MemoryStore
from tests.fixtures.clock import FakeClock

ENTRIES = sorted(
    Entry(path, EntryType.REGULAR, 0o644, 0, 0, 4, bytes([n]) * 32)
    for n, path in enumerate([b"/a", b"/b", b"/c", b"/d"], start=1)
)


class RecordingStore(MemoryStore):
    """A memory store that remembers how each instance save was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[InstanceState, bool]] = []

    def save_instance(
        self, instance: Instance, *, durable: bool = True, audit: Sequence[Event] = ()
    ) -> Instance:
        self.saves.append((instance.state, durable))
        return super().save_instance(instance, durable=durable, audit=audit)


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def service(store: RecordingStore, registry: CollectorRegistry) -> ControllerService:
    manifest = Manifest.build(Policy(), ENTRIES)
    encoded = manifest.encode()
    digest = digest_of(encoded)
    service = ControllerService(
        store, clock=FakeClock(), metrics=ControllerMetrics(registry), stale_after=90.0
    )
    image = ImageRecord(
        name="web",
        version="1",
        ref=f"web@{digest}",
        digest=digest,
        manifest_digest=digest,
        root=manifest.root,
        entry_count=len(ENTRIES),
        byte_count=manifest.byte_count,
    )
    service.register_image(image, encoded, actor="test")
    service.create_group(Group(name="web", desired_image_ref=image.ref))
    return service


def report_for(service: ControllerService, *, seq: int, root: bytes | None = None) -> Report:
    image = service.store.list_images()[0]
    return Report(
        instance_id="i-1",
        group="web",
        image_ref=image.ref,
        image_digest=image.digest,
        root=image.root if root is None else root,
        seq=seq,
        boot_id="b",
        scanned_at_ms=seq,
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_transitions_are_durable_heartbeats_written_behind(
    service: ControllerService, store: RecordingStore
) -> None:
    service.report(report_for(service, seq=1))
    service.report(report_for(service, seq=2))
    service.report(report_for(service, seq=2))  # duplicate: nothing saved
    live = [*ENTRIES[1:]]
    service.report(report_for(service, seq=3, root=root_of(live)))
    assert store.saves == [
        (InstanceState.CONFORMANT, True),
        (InstanceState.CONFORMANT, False),
        (InstanceState.TAINTED, True),
    ]


def test_truncated_evidence_is_stored_unverified(
    service: ControllerService, registry: CollectorRegistry
) -> None:
    service.report(report_for(service, seq=1))
    live = [Entry(b"/z", EntryType.REGULAR, 0o644, 0, 0, 1, b"\x09" * 32), *ENTRIES[2:]]
    changes = tuple(diff(ENTRIES, live))
    evidence = Evidence(changes=changes[:2], truncated=True, total_changes=len(changes))
    decision = service.report(report_for(service, seq=2, root=root_of(live)), evidence)
    taint = decision.instance.taint
    assert taint is not None and taint.kind == DriftKind.FILE
    assert taint.changes == changes[:2]
    assert taint.evidence_truncated and not taint.evidence_verified
    stored = service.store.get_instance("i-1")
    assert stored is not None and stored.taint == taint
    assert sample(registry, "corral_taints_total", group="web", source="agent") == 1
    assert sample(registry, "corral_drift_detections_total", group="web", kind="file") == 1


def test_inconsistent_evidence_marks_suspicious_and_stores_nothing_else(
    service: ControllerService, registry: CollectorRegistry
) -> None:
    service.report(report_for(service, seq=1))
    lie = Evidence(changes=(Change(ChangeKind.REMOVED, b"/a", None),), total_changes=1)
    with pytest.raises(InvalidArgumentError):
        service.report(report_for(service, seq=2, root=b"\x07" * 32), lie)
    stored = service.store.get_instance("i-1")
    assert stored is not None
    assert stored.suspicious and stored.state == InstanceState.CONFORMANT and stored.seq == 1
    assert sample(registry, "corral_evidence_rejected_total", group="web") == 1
    assert sample(registry, "corral_reports_total", result="rejected") == 1
    assert sample(registry, "corral_reports_rejected_total", reason="evidence_inconsistent") == 1


def test_heard_carries_every_field_it_does_not_take_from_the_report() -> None:
    """Guards the hand-written copy in ``heard`` against fields added to Instance later."""
    taint = Taint(kind=DriftKind.MANUAL, reason="r", actor="a", at=1.0)
    values = {
        "id": "i-9",
        "group": "g",
        "state": InstanceState.UNKNOWN,
        "image_ref": "old@x",
        "image_digest": "x",
        "root": b"\x01" * 32,
        "first_seen": 5.0,
        "last_report": 6.0,
        "seq": 7,
        "boot_id": "old",
        "scanned_at_ms": 8,
        "suspicious": True,
        "taint": taint,
        "footprint": Footprint(rss_bytes=1, cpu_millis=2),
        "replaces": "i-0",
        "version": 12,
    }
    assert set(values) == {f.name for f in dataclasses.fields(Instance)}, "update this test"
    before = Instance(**values)  # type: ignore[arg-type]
    report = Report(
        instance_id="i-9",
        group="g",
        image_ref="new@y",
        image_digest="y",
        root=b"\x02" * 32,
        seq=9,
        boot_id="new",
        scanned_at_ms=10,
        footprint=Footprint(rss_bytes=3, cpu_millis=4),
    )
    after = heard(before, report, now=11.0)
    expected = dataclasses.replace(
        before,
        image_ref="new@y",
        image_digest="y",
        root=b"\x02" * 32,
        last_report=11.0,
        seq=9,
        boot_id="new",
        scanned_at_ms=10,
        footprint=Footprint(rss_bytes=3, cpu_millis=4),
    )
    # Field by field: equality skips fields such as the row version (compare=False),
    # and a report written without the version it was read at is a lost race.
    assert dataclasses.asdict(after) == dataclasses.asdict(expected)
