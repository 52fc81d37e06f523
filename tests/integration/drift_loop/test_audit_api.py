"""The auditors' RPCs and ``corral audit --controller`` against a live controller.

Agents report over gRPC, the controller writes its audit log in its SQLite
store, and the auditor asks over ``AuditService``: conformance now and in the
past, an instance's history, the images, a live verify (intact, then after an
edit behind the controller's back), and an export that verifies offline and
fails after a one-byte edit.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from controller.api import audit_convert as convert
from controller.cli.main import main
from controller.security.authz import allowed
from controller.security.identity import Role
from protos.corral.v1 import audit_pb2, audit_pb2_grpc
from tests.fixtures.baked import Baked
from tests.fixtures.clock import FakeClock
from tests.fixtures.running import RunningController

DRIFTED_ROOT = b"\x5a" * 32


def audit_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def history(running: RunningController, web: Baked, clock: FakeClock) -> dict[str, int]:
    """i-1 and i-2 conformant, then i-2 drifts; returns the moments (epoch ms) between."""
    moments = {"before": int(clock() * 1000)}
    clock.advance(10)
    running.report(web.header(instance_id="i-1"))
    running.report(web.header(instance_id="i-2"))
    moments["conformant"] = int(clock() * 1000)
    clock.advance(10)
    running.report(web.header(instance_id="i-2", seq=2, root=DRIFTED_ROOT))
    moments["drifted"] = int(clock() * 1000)
    return moments


def test_auditor_rpcs_answer_from_the_log(
    running: RunningController, web: Baked, history: dict[str, int]
) -> None:
    assert running.channel is not None
    stub = audit_pb2_grpc.AuditServiceStub(running.channel)
    then = stub.AuditConformance(
        audit_pb2.AuditConformanceRequest(at_ms=history["conformant"]), timeout=5
    )
    assert {(i.instance_id, i.state) for i in then.instances} == {
        ("i-1", "conformant"),
        ("i-2", "conformant"),
    }
    now = stub.AuditConformance(audit_pb2.AuditConformanceRequest(group="web"), timeout=5)
    assert {(i.instance_id, i.state) for i in now.instances} == {
        ("i-1", "conformant"),
        ("i-2", "tainted"),
    }
    past = stub.AuditHistory(audit_pb2.AuditHistoryRequest(instance_id="i-2"), timeout=5)
    assert [r.kind for r in past.records] == [
        "instance.state",
        "instance.drift",
        "instance.taint",
        "instance.state",
    ]
    assert past.records[0].actor == "agent:i-2" and past.HasField("launched_ms")
    images = stub.AuditImages(audit_pb2.AuditImagesRequest(), timeout=5)
    assert [i.image for i in images.images] == [web.ref]
    assert {r.instance_id for r in images.images[0].runs} == {"i-1", "i-2"}
    verified = stub.VerifyAudit(audit_pb2.VerifyAuditRequest(), timeout=5)
    assert verified.ok and verified.last_seq == 2 + 1 + 1 + 3
    exported = list(
        stub.ExportAudit(audit_pb2.ExportAuditRequest(since_ms=history["drifted"]), timeout=5)
    )
    assert [r.kind for m in exported for r in m.records] == [
        "instance.drift",
        "instance.taint",
        "instance.state",
    ]
    with pytest.raises(grpc.RpcError) as refused:
        stub.AuditHistory(audit_pb2.AuditHistoryRequest(instance_id=""), timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_cli_asks_the_controller(
    running: RunningController,
    history: dict[str, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = ("--controller", running.address)
    code, out, _ = audit_cli(capsys, "conformance", *source, "--json")
    assert code == 0 and json.loads(out)["ratio"] == 0.5
    code, out, _ = audit_cli(
        capsys, "conformance", *source, "--at", str(history["conformant"]), "--json"
    )
    assert code == 0 and json.loads(out)["ratio"] == 1.0
    code, out, _ = audit_cli(capsys, "history", "i-2", *source)
    assert code == 0 and "instance.taint" in out and "agent:i-2" in out
    code, out, _ = audit_cli(capsys, "images", *source, "--json")
    assert code == 0 and len(json.loads(out)["images"]) == 1
    code, out, _ = audit_cli(capsys, "verify", *source)
    assert code == 0, out

    export = tmp_path / "audit.jsonl"
    code, out, _ = audit_cli(
        capsys, "export", *source, "--since", "0", "--until", "now", "--out", str(export)
    )
    assert code == 0 and "exported 7 records" in out
    assert audit_cli(capsys, "verify", "--file", str(export))[0] == 0
    data = bytearray(export.read_bytes())
    at = data.index(b'"actor":"agent:i-1"') + len(b'"actor":"agent:i-')
    data[at] = ord("9")
    export.write_bytes(bytes(data))
    code, _, err = audit_cli(capsys, "verify", "--file", str(export))
    assert code == 1 and err


def test_live_verify_names_an_edited_record(
    running: RunningController, history: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(running.data_dir / "corral.db") as db:
        db.execute("DROP TRIGGER audit_records_no_update")
        db.execute("UPDATE audit_records SET reason = 'edited' WHERE seq = 4")
    code, out, _ = audit_cli(capsys, "verify", "--controller", running.address, "--json")
    assert code == 1
    assert json.loads(out)["first_bad_seq"] == 4


def test_unreachable_controller_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = audit_cli(capsys, "verify", "--controller", "127.0.0.1:1", "--timeout", "2")
    assert code == 69 and "unavailable" in err


def test_auditors_may_call_every_audit_rpc_agents_may_not() -> None:
    for name in ("AuditConformance", "AuditHistory", "AuditImages", "ExportAudit", "VerifyAudit"):
        method = f"/corral.v1.AuditService/{name}"
        assert allowed(Role.AUDITOR, method) and allowed(Role.OPERATOR, method)
        assert not allowed(Role.AGENT, method)


def test_export_messages_end_at_a_byte_budget(
    running: RunningController, history: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message closes once its records reach EXPORT_BATCH_BYTES (fleet snapshots are MiBs)."""
    assert running.channel is not None
    stub = audit_pb2_grpc.AuditServiceStub(running.channel)
    whole = list(stub.ExportAudit(audit_pb2.ExportAuditRequest(), timeout=5))
    assert len(whole) == 2 and len(whole[0].records) == 7  # the records, then the checkpoints
    monkeypatch.setattr(convert, "EXPORT_BATCH_BYTES", whole[0].records[0].ByteSize() + 1)
    split = list(stub.ExportAudit(audit_pb2.ExportAuditRequest(), timeout=5))
    assert all(0 < len(m.records) <= 2 for m in split[:-1]) and not split[-1].records
    assert [r for m in split for r in m.records] == list(whole[0].records)
