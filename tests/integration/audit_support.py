"""A controller service over a memory or SQLite store, with a fake clock, for audit tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.manifest.format import Entry, EntryType, Manifest, digest_of, root_of
from agent.manifest.policy import Policy
from agent.manifest.report import Report
from controller.audit.record import Record
from controller.domain.model import Group, ImageRecord
from controller.engine.reports import ControllerService
from controller.metrics import ControllerMetrics
from controller.ports import Store
from controller.store.memory import MemoryStore
from controller.store.sqlite import SqliteStore
from tests.fixtures.clock import FakeClock

ENTRIES = sorted(
    Entry(path, EntryType.REGULAR, 0o644, 0, 0, 4, bytes([n]) * 32)
    for n, path in enumerate([b"/a", b"/b", b"/c", b"/d"], start=1)
)
DRIFTED = ENTRIES[1:]
START = 1_700_000_000.0


def open_store(kind: str, data_dir: Path) -> Store:
    return MemoryStore() if kind == "memory" else SqliteStore(data_dir)


@dataclass
class Fleet:
    """The service, its clock, and helpers that play agents and operators."""

    service: ControllerService
    clock: FakeClock

    @property
    def store(self) -> Store:
        return self.service.store

    def records(self) -> list[Record]:
        return list(self.store.audit_log().records())

    def image(self, version: str) -> ImageRecord:
        """Register an image whose manifest differs by ``version`` (returns the stored record)."""
        entries = [*ENTRIES, Entry(b"/version", EntryType.REGULAR, 0o644, 0, 0, 1, b"\x07" * 32)]
        if version == "1":
            entries = list(ENTRIES)
        manifest = Manifest.build(Policy(), sorted(entries))
        encoded = manifest.encode()
        digest = digest_of(encoded)
        image = ImageRecord(
            name="web",
            version=version,
            ref=f"web@{digest}",
            digest=digest,
            manifest_digest=digest,
            root=manifest.root,
            entry_count=len(entries),
            byte_count=manifest.byte_count,
        )
        stored, _ = self.service.register_image(image, encoded, actor="alice")
        return stored

    def group(self, image: ImageRecord, name: str = "web") -> None:
        self.service.create_group(Group(name=name, desired_image_ref=image.ref), actor="alice")

    def report(
        self, instance_id: str, image: ImageRecord, *, seq: int, drifted: bool = False
    ) -> None:
        self.service.report(
            Report(
                instance_id=instance_id,
                group="web",
                image_ref=image.ref,
                image_digest=image.digest,
                root=root_of(DRIFTED) if drifted else image.root,
                seq=seq,
                boot_id="b",
                scanned_at_ms=seq,
            )
        )


def make_fleet(store: Store, *, registry: CollectorRegistry | None = None) -> Fleet:
    clock = FakeClock(START)
    service = ControllerService(
        store,
        clock=clock,
        metrics=ControllerMetrics(registry or CollectorRegistry()),
        stale_after=90.0,
    )
    return Fleet(service, clock)


def ms(seconds: float) -> int:
    return int(seconds * 1000)
