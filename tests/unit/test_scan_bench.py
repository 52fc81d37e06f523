"""The scan benchmark and its tree generator keep working (a tiny run, not a timing)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.bench import treegen

REPO = Path(__file__).resolve().parents[2]


def fingerprint(root: Path) -> list[tuple[str, int, int, int, str]]:
    rows = []
    for top, _dirs, names in os.walk(root):
        for name in names:
            path = Path(top) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            rows.append(
                (str(path.relative_to(root)), st.st_size, st.st_mode, st.st_mtime_ns, digest)
            )
    return sorted(rows)


def test_the_generator_is_deterministic_and_has_the_documented_shape(tmp_path: Path) -> None:
    first = treegen.generate(tmp_path / "a", files=120, seed=7)
    treegen.generate(tmp_path / "b", files=120, seed=7)
    treegen.generate(tmp_path / "c", files=120, seed=8)

    rows = fingerprint(tmp_path / "a")
    assert rows == fingerprint(tmp_path / "b")
    assert rows != fingerprint(tmp_path / "c")
    assert len(rows) == first.files == 120
    assert len({row[4] for row in rows}) == 120  # every digest different
    assert sum(row[1] >= 10 << 20 for row in rows) == 1  # at least one large file
    assert {row[0].split("/")[0] for row in rows} <= set(treegen.TOP_DIRS)
    assert all(2 <= row[0].count("/") <= treegen.MAX_DEPTH for row in rows)
    assert {row[2] & 0o777 for row in rows} <= {0o644, 0o755}


def test_the_benchmark_runs_end_to_end_on_a_tiny_tree(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO / "tests/bench/bench_scan.py"),
        "--files",
        "60",
        "--tree",
        str(tmp_path / "trees"),
        "--keep",
        str(tmp_path / "out"),
        "--json",
    ]
    completed = subprocess.run(command, capture_output=True, check=False, timeout=120)
    assert completed.returncode == 0, completed.stderr.decode()
    report = json.loads(completed.stdout)

    assert report["files"] == 60
    assert report["deterministic"] is True
    assert report["rescan"]["same_root"] is True
    assert report["rescan"]["files_hashed"] == 0
    assert report["bake_max_rss_mb"] > 0
    assert (tmp_path / "out/bake-1/manifest.pb").read_bytes() == (
        tmp_path / "out/bake-2/manifest.pb"
    ).read_bytes()
