"""The committed generated protobuf modules are exactly what scripts/gen_protos.py produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "protos" / "corral" / "v1"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    fresh = {path.name: path.read_bytes() for path in written}
    committed = {path.name: path.read_bytes() for path in GENERATED.glob("*_pb2*.py*")}
    assert fresh, "the generator produced nothing"
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs: run scripts/gen_protos.py"
    )
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated files {stale}: run .venv/bin/python scripts/gen_protos.py"
