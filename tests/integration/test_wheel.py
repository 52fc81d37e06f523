"""The built wheel, not the checkout, runs: the flat layout must ship every package it needs.

Tests import the checkout, so a module missing from the wheel (a package without
``__init__.py``, a ``.pyi`` left out) would pass every other test. This builds
the wheel, installs it into an empty directory and runs commands from it with
the checkout out of the import path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _build(tmp: Path) -> Path:
    # Built from a copy: setuptools leaves build/ behind, and a stale build/lib would
    # ship modules the checkout no longer has.
    source = tmp / "source"
    for name in ("pyproject.toml", "README.md", "agent", "controller", "protos"):
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("corral-*.whl")
    return wheel


def test_the_wheel_holds_the_packages_and_runs_from_elsewhere(tmp_path: Path) -> None:
    wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if "/" in name and ".dist-info" not in name}
    assert tops == {"agent", "controller", "protos"}
    packages = {
        path.parent.relative_to(REPO).as_posix()
        for top in tops
        for path in (REPO / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"packages without __init__.py in the wheel: {missing}"
    assert "protos/corral/v1/agent.proto" in names
    assert "protos/corral/v1/agent_pb2.pyi" in names

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "app.conf").write_text("port = 80\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = tmp_path / "out"

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "import sys; from controller.cli.main import main; "
             "sys.exit(main(sys.argv[1:]))", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    where = subprocess.run(
        [sys.executable, "-c", "import controller, agent, protos; print(controller.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site))
    baked = corral("bake", str(tree), "--out", str(out), "--json")
    assert baked.returncode == 0, baked.stderr
    assert json.loads(baked.stdout)["entry_count"] == 3
    verified = corral("verify", str(tree), "--manifest", str(out / "manifest.pb"))
    assert verified.returncode == 0, verified.stderr
    for command in ("demo", "audit", "certs", "rollout"):
        assert corral(command, "--help").returncode == 0, command
