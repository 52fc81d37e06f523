"""The operator CLI (``corral image/group/fleet/taint``) against a live controller.

Each test calls ``controller.cli.main.main([...])`` exactly as a shell would, against
a controller on 127.0.0.1 (port 0), with an image baked by ``corral bake`` from a
real directory. Exit codes follow the CLI contract: 0 ok, 1 refused, 2 invalid
input, 69 controller unavailable.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from agent.manifest.diff import diff
from agent.manifest.format import entry_to_proto, read_manifest
from agent.scan.scanner import scan
from controller.cli.main import main
from protos.corral.v1 import agent_pb2, manifest_pb2
from tests.fixtures.running import RunningController

_CHANGE_KINDS = {
    "added": manifest_pb2.CHANGE_KIND_ADDED,
    "removed": manifest_pb2.CHANGE_KIND_REMOVED,
    "modified": manifest_pb2.CHANGE_KIND_MODIFIED,
}


class Bake:
    """A real image root, baked with ``corral bake``."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "rootfs"
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc" / "hostname").write_text("web\n")
        (self.root / "etc" / "motd").write_text("hello\n")
        self.out = tmp_path / "bake"
        code = main(["bake", str(self.root), "--out", str(self.out), "--name", "web"])
        assert code == 0
        self.image = json.loads((self.out / "image.json").read_text())
        self.ref: str = self.image["image_ref"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def bake(tmp_path: Path) -> Bake:
    return Bake(tmp_path)


@pytest.fixture
def ctl(running: RunningController) -> tuple[str, str]:
    return ("--controller", running.address)


def header_for(bake: Bake, *, root: bytes, seq: int) -> agent_pb2.ReportHeader:
    return agent_pb2.ReportHeader(
        instance_id="i-cli",
        group="web",
        image_ref=bake.ref,
        image_digest=bake.image["image_digest"],
        root=root,
        seq=seq,
        boot_id="boot-1",
        scanned_at_ms=seq,
    )


def setup_fleet(capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]) -> None:
    assert run(capsys, "image", "register", str(bake.out), *ctl)[0] == 0
    assert run(capsys, "group", "create", "web", "--image", bake.ref, *ctl)[0] == 0


class TestImages:
    def test_register_then_again_then_list(
        self, capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]
    ) -> None:
        code, out, _ = run(capsys, "image", "register", str(bake.out), *ctl)
        assert code == 0 and bake.ref in out and "already" not in out
        code, out, _ = run(capsys, "image", "register", str(bake.out), *ctl)
        assert code == 0 and "already registered" in out
        code, out, _ = run(capsys, "image", "list", "--json", *ctl)
        images = json.loads(out)
        assert code == 0 and [i["image_ref"] for i in images] == [bake.ref]
        assert images[0]["root"] == bake.image["root"]
        assert images[0]["entry_count"] == bake.image["entry_count"]
        code, out, _ = run(capsys, "image", "list", *ctl)
        assert code == 0 and bake.ref in out and "REF" in out

    def test_a_directory_that_is_not_a_bake_is_invalid(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, ctl: tuple[str, str]
    ) -> None:
        code, _, err = run(capsys, "image", "register", str(tmp_path), *ctl)
        assert code == 2 and "image.json" in err

    def test_a_tampered_manifest_is_refused_as_invalid(
        self, capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]
    ) -> None:
        manifest = bake.out / "manifest.pb"
        manifest.write_bytes(manifest.read_bytes() + b"\x00")
        code, _, err = run(capsys, "image", "register", str(bake.out), *ctl)
        assert code == 2 and "invalid_argument" in err


class TestGroups:
    def test_create_and_list(
        self, capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]
    ) -> None:
        assert run(capsys, "image", "register", str(bake.out), *ctl)[0] == 0
        code, out, _ = run(
            capsys, "group", "create", "web", "--image", bake.ref, "--mode", "enforce", *ctl
        )
        assert code == 0 and "created web" in out
        code, out, _ = run(
            capsys, "group", "create", "web", "--image", bake.ref, "--mode", "enforce", *ctl
        )
        assert code == 0 and "already exists" in out
        code, out, _ = run(capsys, "group", "list", "--json", *ctl)
        groups = json.loads(out)
        assert code == 0 and len(groups) == 1
        assert groups[0]["name"] == "web" and groups[0]["mode"] == "enforce"
        assert groups[0]["image_ref"] == bake.ref and groups[0]["size"] == 0
        code, out, _ = run(capsys, "group", "list", *ctl)
        assert code == 0 and "enforce" in out

    def test_unregistered_image_is_refused(
        self, capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]
    ) -> None:
        code, _, err = run(capsys, "group", "create", "web", "--image", bake.ref, *ctl)
        assert code == 1 and "not registered" in err

    def test_same_name_other_image_is_refused(
        self, capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]
    ) -> None:
        setup_fleet(capsys, bake, ctl)
        code, _, err = run(
            capsys, "group", "create", "web", "--image", bake.ref, "--mode", "enforce", *ctl
        )
        assert code == 1 and "already_exists" in err

    def test_bad_group_name_is_invalid(
        self, capsys: pytest.CaptureFixture[str], bake: Bake, ctl: tuple[str, str]
    ) -> None:
        assert run(capsys, "image", "register", str(bake.out), *ctl)[0] == 0
        code, _, err = run(capsys, "group", "create", "no spaces", "--image", bake.ref, *ctl)
        assert code == 2 and "group.name" in err


class TestFleet:
    def test_list_and_show_a_conformant_instance(
        self,
        capsys: pytest.CaptureFixture[str],
        bake: Bake,
        ctl: tuple[str, str],
        running: RunningController,
    ) -> None:
        setup_fleet(capsys, bake, ctl)
        root = bytes.fromhex(bake.image["root"])
        assert running.report(header_for(bake, root=root, seq=1)).state == (
            agent_pb2.INSTANCE_STATE_CONFORMANT
        )
        code, out, _ = run(capsys, "fleet", "list", "--json", *ctl)
        listed = json.loads(out)
        assert code == 0 and [(i["id"], i["state"]) for i in listed] == [("i-cli", "conformant")]
        code, out, _ = run(capsys, "fleet", "list", "--group", "web", *ctl)
        assert code == 0 and "i-cli" in out and "conformant" in out
        code, out, _ = run(capsys, "fleet", "show", "i-cli", "--json", *ctl)
        shown = json.loads(out)
        assert code == 0 and shown["state"] == "conformant"
        assert shown["image_ref"] == bake.ref and shown["last_seq"] == 1
        assert isinstance(shown["last_report_age_seconds"], float)
        assert shown["last_report_age_seconds"] >= 0
        assert shown["taint"] is None
        code, out, _ = run(capsys, "fleet", "show", "i-cli", *ctl)
        assert code == 0 and "conformant" in out and "ago" in out and bake.ref in out

    def test_show_drift_evidence_paths(
        self,
        capsys: pytest.CaptureFixture[str],
        bake: Bake,
        ctl: tuple[str, str],
        running: RunningController,
    ) -> None:
        setup_fleet(capsys, bake, ctl)
        manifest, _ = read_manifest(str(bake.out / "manifest.pb"))
        (bake.root / "etc" / "motd").write_text("owned\n")
        (bake.root / "etc" / "cron-evil").write_text("* * * * * sh\n")
        live = scan(bake.root, manifest.policy)
        changes = diff(manifest.entries, live.entries)
        request = agent_pb2.ReportDriftRequest(
            header=header_for(bake, root=live.root, seq=1), total_changes=len(changes)
        )
        for change in changes:
            item = request.changes.add(
                kind=_CHANGE_KINDS[change.kind.value],
                path=change.path,
                attributes=change.attributes,
            )
            if change.entry is not None:
                item.entry.CopyFrom(entry_to_proto(change.entry))
        response = running.agent.ReportDrift(request, timeout=5)
        assert response.state == agent_pb2.INSTANCE_STATE_TAINTED
        code, out, _ = run(capsys, "fleet", "show", "i-cli", "--json", *ctl)
        shown: dict[str, Any] = json.loads(out)
        assert code == 0 and shown["state"] == "tainted"
        taint = shown["taint"]
        assert taint["kind"] == "file" and taint["evidence_verified"]
        paths = {(c["kind"], c["path"]) for c in taint["changes"]}
        assert paths == {("modified", "/etc/motd"), ("added", "/etc/cron-evil")}
        code, out, _ = run(capsys, "fleet", "show", "i-cli", *ctl)
        assert code == 0 and "/etc/motd" in out and "/etc/cron-evil" in out
        assert "verified" in out

    def test_unknown_instance_and_group(
        self, capsys: pytest.CaptureFixture[str], ctl: tuple[str, str]
    ) -> None:
        code, _, err = run(capsys, "fleet", "show", "i-nobody", *ctl)
        assert code == 1 and "not_found" in err
        code, _, err = run(capsys, "fleet", "list", "--group", "nope", *ctl)
        assert code == 1 and "not declared" in err


class TestTaint:
    def test_taint_by_hand(
        self,
        capsys: pytest.CaptureFixture[str],
        bake: Bake,
        ctl: tuple[str, str],
        running: RunningController,
    ) -> None:
        setup_fleet(capsys, bake, ctl)
        running.report(header_for(bake, root=bytes.fromhex(bake.image["root"]), seq=1))
        code, out, _ = run(capsys, "taint", "i-cli", "--reason", "CVE-2024-0001 on host", *ctl)
        assert code == 0 and "i-cli is tainted" in out
        code, out, _ = run(capsys, "fleet", "show", "i-cli", "--json", *ctl)
        shown = json.loads(out)
        assert shown["state"] == "tainted"
        assert shown["taint"]["kind"] == "manual"
        assert shown["taint"]["reason"] == "CVE-2024-0001 on host"
        assert "@" in shown["taint"]["actor"]  # user@host from the CLI
        # Idempotent, and a good report does not clear it.
        assert run(capsys, "taint", "i-cli", "--reason", "again", *ctl)[0] == 0
        running.report(header_for(bake, root=bytes.fromhex(bake.image["root"]), seq=2))
        code, out, _ = run(capsys, "fleet", "show", "i-cli", "--json", *ctl)
        assert json.loads(out)["state"] == "tainted"

    def test_refused_and_invalid(
        self, capsys: pytest.CaptureFixture[str], ctl: tuple[str, str]
    ) -> None:
        code, _, err = run(capsys, "taint", "i-nobody", "--reason", "why", *ctl)
        assert code == 1 and "not_found" in err
        code, _, err = run(capsys, "taint", "i-nobody", "--reason", "   ", *ctl)
        assert code == 2 and "reason" in err


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "argv",
    [
        ("fleet", "show", "i-1"),
        ("taint", "i-1", "--reason", "r"),
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
def test_unavailable_controller_exits_69(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    # Each takes ~1.3 s: the client retries UNAVAILABLE with backoff before giving up.
    code, _, err = run(capsys, *argv, "--controller", closed_port(), "--timeout", "2")
    assert code == 69 and "unavailable" in err


def test_controller_address_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    running: RunningController,
) -> None:
    monkeypatch.setenv("CORRAL_CONTROLLER", running.address)
    code, out, _ = run(capsys, "image", "list", "--json")
    assert code == 0 and json.loads(out) == []
    monkeypatch.setenv("CORRAL_CONTROLLER", closed_port())
    assert run(capsys, "image", "list", "--timeout", "2")[0] == 69
