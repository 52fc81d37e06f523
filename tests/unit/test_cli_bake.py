"""`corral bake` and `corral verify` as a user runs them: output, JSON schema, exit codes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.paths import parse_display_path
from controller.cli.bake import _ProgressLine
from controller.cli.main import main

PEM_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "web-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("listen = 80\n")
    (root / "etc" / "app.conf").chmod(0o644)
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("../etc/app.conf", root / "usr" / "bin" / "conf")
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    return root


def test_bake_prints_a_summary(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bake", str(tree), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    image = json.loads((tmp_path / "out" / "image.json").read_text())
    assert image["name"] == "web-root" and image["version"] == "0"
    assert captured.out.splitlines()[0] == f"baked {image['image_ref']}"
    assert image["root"] in captured.out
    assert captured.err == ""


def test_bake_json_is_image_json_plus_warnings(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "etc" / "server.key").write_text(PEM_KEY)
    out = tmp_path / "out"
    args = ["bake", str(tree), "--out", str(out), "--name", "web", "--version", "1.0", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    warnings = document.pop("warnings")
    assert document == json.loads((out / "image.json").read_text())
    assert document["image_ref"] == "web@" + document["manifest_digest"]
    assert document["secrets_warnings"] == 1
    assert warnings == [
        {"path": "/etc/server.key", "kind": "private_key", "reason": "contains a private key"}
    ]
    assert "warning: secret: /etc/server.key: contains a private key" in captured.err


def test_bake_strict_fails_without_leaving_a_manifest(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / ".env").write_text("DB_PASSWORD=hunter2\n")
    out = tmp_path / "out"
    assert main(["bake", str(tree), "--out", str(out), "--strict"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "/.env" in captured.err and "DB_PASSWORD" in captured.err
    assert not (out / "manifest.pb").exists() and not (out / "image.json").exists()
    assert main(["bake", str(tree), "--out", str(out)]) == 0  # without --strict: a warning only


def test_bake_strict_passes_on_a_clean_tree(tree: Path, tmp_path: Path) -> None:
    assert main(["bake", str(tree), "--out", str(tmp_path / "out"), "--strict"]) == 0


def test_bake_with_a_policy_file(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nextra_exclude = ["/usr"]\nignore_attributes = ["mode"]\n')
    assert (
        main(["bake", str(tree), "--out", str(tmp_path / "out"), "--policy", str(policy), "--json"])
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["policy"]["exclude"][-1] == "/usr"
    assert document["policy"]["ignore_attributes"] == ["mode"]
    assert document["entry_count"] == 4  # /, /caf\xe9, /etc, /etc/app.conf


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Not Valid"], "not a valid reference name"),
        (["--policy", "/nonexistent/policy.toml"], "cannot read policy"),
    ],
)
def test_bake_input_errors_exit_2(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["bake", str(tree), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("corral bake: error: ") and message in err


def test_bake_missing_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bake", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_usage_errors_exit_2(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bake", str(tree)], ["verify", str(tree)], ["verify"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2


# --- verify ---------------------------------------------------------------------------


@pytest.fixture
def baked(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["bake", str(tree), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    return tmp_path / "out" / "manifest.pb"


def _verify_json(
    tree: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    code = main(["verify", str(tree), "--manifest", str(manifest), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_conformant(tree: Path, baked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, document = _verify_json(tree, baked, capsys)
    assert code == 0
    image = json.loads((baked.parent / "image.json").read_text())
    assert document == {
        "conformant": True,
        "root": image["root"],
        "expected_root": image["root"],
        "manifest_digest": image["manifest_digest"],
        "changes": [],
        "counts": {
            "added": 0,
            "removed": 0,
            "modified": 0,
            "entries": image["entry_count"],
            "expected_entries": image["entry_count"],
            "scan_errors": 0,
        },
    }
    assert main(["verify", str(tree), "--manifest", str(baked), "--full"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conformant: ") and image["manifest_digest"] in out


def test_verify_drift_json_and_table(
    tree: Path, baked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "etc" / "app.conf").write_text("listen = 8080\n")
    (tree / "etc" / "app.conf").chmod(0o600)
    os.chown(tree / "usr" / "bin", 1000, 1000)
    os.unlink(tree / "usr" / "bin" / "conf")
    os.symlink("/etc/passwd", tree / "usr" / "bin" / "conf")
    os.unlink(os.path.join(os.fsencode(tree), b"caf\xe9"))
    (tree / os.fsdecode(b"new\xff\nline")).write_text("x")
    code, document = _verify_json(tree, baked, capsys)
    assert code == 1
    assert document["conformant"] is False
    assert document["root"] != document["expected_root"]
    assert document["changes"] == [
        {"path": "/caf%E9", "kind": "removed", "attributes": []},
        {"path": "/etc/app.conf", "kind": "modified", "attributes": ["mode", "size", "content"]},
        {"path": "/new%FF%0Aline", "kind": "added", "attributes": []},
        {"path": "/usr/bin", "kind": "modified", "attributes": ["uid", "gid"]},
        {"path": "/usr/bin/conf", "kind": "modified", "attributes": ["target"]},
    ]
    paths = [parse_display_path(change["path"]) for change in document["changes"]]
    assert paths[0] == b"/caf\xe9" and paths[2] == b"/new\xff\nline"
    assert document["counts"]["added"] == 1
    assert document["counts"]["removed"] == 1
    assert document["counts"]["modified"] == 3

    assert main(["verify", str(tree), "--manifest", str(baked)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "PATH", "ATTRIBUTES"]
    assert lines[1].split() == ["removed", "/caf%E9", "-"]
    assert lines[2].split() == ["modified", "/etc/app.conf", "mode,size,content"]
    assert lines[3].split() == ["added", "/new%FF%0Aline", "-"]
    assert len(lines) == 7
    assert lines[-1].startswith("drift: 5 change(s) (1 added, 1 removed, 3 modified); root ")


@pytest.mark.parametrize("problem", ["missing root", "missing manifest", "corrupt", "empty", "dir"])
def test_verify_input_errors_exit_2(
    tree: Path, baked: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    root, manifest = str(tree), str(baked)
    if problem == "missing root":
        root = str(tmp_path / "absent")
    elif problem == "missing manifest":
        manifest = str(tmp_path / "absent.pb")
    elif problem == "corrupt":
        data = bytearray(baked.read_bytes())
        data[-1] ^= 0xFF  # flip a byte inside the last entry
        baked.write_bytes(bytes(data))
    elif problem == "empty":
        baked.write_bytes(b"")
    else:
        manifest = str(tmp_path)
    assert main(["verify", root, "--manifest", manifest, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("corral verify: error: ")
    assert len(captured.err.splitlines()) == 1


def test_progress_line_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        line = _ProgressLine(stream)
        line(1000, 3 * 2**20)
        line.clear()
    assert pipe.getvalue() == ""
    assert tty.getvalue().startswith("\r  scanning:") and "1,000 entries" in tty.getvalue()
    assert tty.getvalue().endswith("\r\033[K")
