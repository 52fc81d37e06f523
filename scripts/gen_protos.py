"""Regenerate the Python modules and type stubs for protos/corral/v1/*.proto.

The .proto files import each other as "corral/v1/x.proto" (buf's module root is
protos/), so protoc emits ``from corral.v1 import x_pb2``. The installed package
is ``protos``, so this script rewrites those imports to ``protos.corral.v1``.
``tests/unit/test_protos_fresh.py`` runs it into a temporary directory and fails
when the committed files differ.

Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PACKAGE_DIR = Path("corral") / "v1"
_IMPORT = re.compile(rb"^(from|import) corral\.v1", re.MULTILINE)


def _plugin(name: str) -> str:
    """The mypy-protobuf plugins live beside this interpreter (a venv's bin/)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return found


def generate(out: Path) -> list[Path]:
    """Compile every proto into ``out`` (a directory laid out like protos/)."""
    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *(str(s.relative_to(PROTO_ROOT)) for s in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for produced in sorted((Path(tmp) / PACKAGE_DIR).iterdir()):
            text = _IMPORT.sub(rb"\1 protos.corral.v1", produced.read_bytes())
            target = out / PACKAGE_DIR / produced.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text)
            written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
