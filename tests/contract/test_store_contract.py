"""One contract for every Store adapter: memory, SQLite and PostgreSQL (marked ``postgres``)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from agent.manifest.diff import Change, ChangeKind
from agent.manifest.format import Entry, EntryType
from controller.audit import install_schema
from controller.domain.model import DriftKind, Group, GroupMode, ImageRecord, InstanceState, Taint
from controller.domain.replacement_actions import Phase
from controller.errors import AlreadyExistsError, NotFoundError
from controller.ports import Store
from controller.store.codec import INSTANCE_COLUMNS, instance_from_row
from controller.store.sqlite import SqliteStore
from tests.fixtures.records import GROUP, IMAGE, instance, replacement


class TestImages:
    def test_registered_image_reads_back_by_ref_and_digest(self, store: Store) -> None:
        assert store.add_image(IMAGE, b"manifest") is True
        assert store.get_image_by_ref(IMAGE.ref) == IMAGE
        assert store.get_image_by_digest(IMAGE.digest) == IMAGE
        assert store.get_manifest(IMAGE.manifest_digest) == b"manifest"
        assert store.list_images() == [IMAGE]

    def test_same_image_again_is_idempotent(self, store: Store) -> None:
        store.add_image(IMAGE, b"manifest")
        assert store.add_image(replace(IMAGE, registered_at=999.0), b"manifest") is False
        assert store.list_images() == [IMAGE]

    @pytest.mark.parametrize(
        "clash",
        [
            replace(IMAGE, manifest_digest="sha256:" + "c" * 64),
            replace(IMAGE, root=b"\x02" * 32),
            replace(IMAGE, ref="other@sha256:" + "a" * 64),
            replace(IMAGE, digest="sha256:" + "d" * 64),
        ],
    )
    def test_different_image_under_same_ref_or_digest_is_refused(
        self, store: Store, clash: ImageRecord
    ) -> None:
        store.add_image(IMAGE, b"manifest")
        with pytest.raises(AlreadyExistsError):
            store.add_image(clash, b"other")
        assert store.list_images() == [IMAGE]

    def test_missing_things_read_as_none_or_not_found(self, store: Store) -> None:
        assert store.get_image_by_ref("nope") is None
        assert store.get_image_by_digest("nope") is None
        with pytest.raises(NotFoundError):
            store.get_manifest("sha256:" + "0" * 64)


class TestGroups:
    def test_group_create_is_idempotent_and_refuses_a_different_one(self, store: Store) -> None:
        assert store.add_group(GROUP) is True
        assert store.add_group(GROUP) is False
        with pytest.raises(AlreadyExistsError):
            store.add_group(replace(GROUP, mode=GroupMode.ENFORCE))
        assert store.list_groups() == [GROUP]

    def test_update_group(self, store: Store) -> None:
        store.add_group(GROUP)
        stored = store.get_group("web")
        assert stored is not None
        changed = replace(stored, breaker_open=True, image_history=("old@sha256:" + "e" * 64,))
        saved = store.update_group(changed)
        assert saved == changed and saved.version == stored.version + 1
        assert store.get_group("web") == changed
        with pytest.raises(NotFoundError):
            store.update_group(replace(GROUP, name="ghost"))


class TestInstances:
    def test_instance_round_trips_with_taint_and_evidence(self, store: Store) -> None:
        store.add_group(GROUP)
        entry = Entry(b"/etc/\xffx", EntryType.REGULAR, 0o644, 0, 0, 5, b"\x09" * 32)
        taint = Taint(
            kind=DriftKind.FILE,
            reason="files differ",
            actor="agent",
            at=5.0,
            changes=(
                Change(ChangeKind.MODIFIED, entry.path, entry, ("content",)),
                Change(ChangeKind.REMOVED, b"/bin/sh", None),
            ),
            evidence_verified=True,
        )
        tainted = instance(state=InstanceState.TAINTED, taint=taint, suspicious=True)
        store.save_instance(tainted)
        assert store.get_instance("i-1") == tainted
        assert store.list_instances("web") == [tainted]
        assert store.list_instances("other") == []
        assert store.list_instances() == [tainted]

    def test_instance_of_undeclared_group_is_refused(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            store.save_instance(instance(group="ghost"))
        assert store.get_instance("i-1") is None

    def test_heartbeat_written_behind_is_visible_at_once(self, store: Store) -> None:
        store.add_group(GROUP)
        created = store.save_instance(instance())
        store.save_instance(replace(created, seq=4), durable=False)
        assert store.get_instance("i-1") == instance(seq=4)
        store.flush()
        assert store.get_instance("i-1") == instance(seq=4)


class TestSqliteDurability:
    def test_state_survives_reopen(self, tmp_path: Path) -> None:
        first = SqliteStore(tmp_path)
        first.add_image(IMAGE, b"manifest")
        first.add_group(GROUP)
        created = first.save_instance(instance())
        beat = first.save_instance(replace(created, seq=9), durable=False)
        first.close()
        second = SqliteStore(tmp_path)
        assert second.list_images() == [IMAGE]
        assert second.get_group("web") == GROUP
        reread = second.get_instance("i-1")
        assert reread == instance(seq=9)
        assert reread is not None and reread.version == beat.version
        assert second.get_manifest(IMAGE.manifest_digest) == b"manifest"
        second.close()

    def test_durable_write_is_on_disk_before_flush(self, tmp_path: Path) -> None:
        first = SqliteStore(tmp_path)
        first.add_group(GROUP)
        first.save_instance(instance(state=InstanceState.TAINTED))
        # A second connection sees the committed row without any flush (the store
        # holds the data dir's lock, so read the file with sqlite3 itself).
        reader = sqlite3.connect(f"file:{tmp_path / 'corral.db'}?mode=ro", uri=True)
        row = reader.execute(
            f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances WHERE id = 'i-1'"
        ).fetchone()
        reader.close()
        first.close()
        assert instance_from_row(row) == instance(state=InstanceState.TAINTED)

    def test_migrations_run_once(self, tmp_path: Path) -> None:
        SqliteStore(tmp_path).close()
        SqliteStore(tmp_path).close()

        db = sqlite3.connect(tmp_path / "corral.db")
        assert db.execute("SELECT version FROM schema_migrations").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()


RECORD = replacement()
ENGINE_GROUP = replace(
    GROUP,
    max_concurrent_replacements=0,
    generation=3,
    breaker_open=True,
    breaker_opened_at=5.5,
    breaker_resumed_at=4.25,
    breaker_reason="6 of 20 tainted",
    image_history=("web@sha256:" + "c" * 64,),
    past_images=("web@sha256:" + "c" * 64, "web@sha256:" + "d" * 64),
)


class TestReplacements:
    def test_recorded_once_by_idempotency_key(self, store: Store) -> None:
        store.add_group(GROUP)
        assert store.add_replacement(RECORD) is True
        replayed = replace(RECORD, recorded_at=99.0)
        assert store.add_replacement(replayed) is False
        assert store.get_replacement(RECORD.replacement_id) == RECORD
        assert store.list_replacements("web") == [RECORD]
        assert store.list_replacements("other") == []

    def test_update_replaces_every_field(self, store: Store) -> None:
        store.add_group(GROUP)
        store.add_replacement(RECORD)
        recorded = store.get_replacement(RECORD.replacement_id)
        assert recorded is not None
        moved = replace(
            recorded,
            phase=Phase.BACKOFF,
            attempt=2,
            launch_issued_at=3.5,
            new_instance_id="web-abc",
            old_terminated=True,
            launch_error="boom",
            retry_at=40.0,
            finished_at=41.0,
            reason="not conformant",
        )
        saved = store.update_replacement(moved)
        assert saved == moved and saved.version == recorded.version + 1
        assert store.get_replacement(RECORD.replacement_id) == moved

    def test_unknown_group_and_unknown_row_are_refused(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            store.add_replacement(RECORD)
        store.add_group(GROUP)
        with pytest.raises(NotFoundError):
            store.update_replacement(RECORD)
        assert store.get_replacement("nope") is None

    def test_listed_oldest_recorded_first(self, store: Store) -> None:
        store.add_group(GROUP)
        second = replace(RECORD, replacement_id="rol-i-2-g1", instance_id="i-2", recorded_at=3.0)
        store.add_replacement(RECORD)
        store.add_replacement(second)
        assert [r.replacement_id for r in store.list_replacements()] == [
            RECORD.replacement_id,
            second.replacement_id,
        ]

    def test_engine_fields_of_a_group_round_trip(self, store: Store) -> None:
        store.add_group(GROUP)
        store.update_group(_as_read(store, ENGINE_GROUP))
        assert store.get_group("web") == ENGINE_GROUP


def _as_read(store: Store, group: Group) -> Group:
    """``group`` carrying the version its stored row has now (a write from a fresh read)."""
    stored = store.get_group(group.name)
    assert stored is not None
    return replace(group, version=stored.version)


def test_replacements_and_engine_fields_survive_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path)
    first.add_group(GROUP)
    engine = first.update_group(_as_read(first, ENGINE_GROUP))
    first.add_replacement(RECORD)
    recorded = first.get_replacement(RECORD.replacement_id)
    assert recorded is not None
    launching = first.update_replacement(replace(recorded, phase=Phase.LAUNCHING, attempt=1))
    first.close()
    second = SqliteStore(tmp_path)
    group = second.get_group("web")
    assert group == ENGINE_GROUP
    assert group is not None and group.version == engine.version
    assert second.list_replacements() == [replace(RECORD, phase=Phase.LAUNCHING, attempt=1)]
    assert [r.version for r in second.list_replacements()] == [launching.version]
    second.close()


def test_version_1_database_is_migrated_and_keeps_its_groups(tmp_path: Path) -> None:
    from controller.store.sqlite import MIGRATIONS  # noqa: PLC0415

    db = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    db.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
        "applied_at DOUBLE PRECISION NOT NULL)"
    )
    for statement in MIGRATIONS[0][1]:
        db.execute(statement)
    db.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    install_schema(db)  # a store at schema 1 already held the audit log (opening checks it)
    db.execute(
        "INSERT INTO groups VALUES ('web', ?, ?, 'enforce', 'local', 1, 3, 0, '[]')",
        (IMAGE.ref, IMAGE.digest),
    )
    db.close()
    store = SqliteStore(tmp_path)
    group = store.get_group("web")
    assert group is not None
    assert (group.generation, group.max_concurrent_replacements, group.past_images) == (0, 0, ())
    assert group.desired_size == 3
    assert group.version == 1  # a row stored before row versions reads as version 1
    assert store.update_group(replace(group, desired_size=4)).version == 2
    store.close()
