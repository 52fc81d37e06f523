"""bench_realtime.py keeps working: a tiny run end to end (a smoke test, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_realtime_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(REPO / "tests" / "bench" / "bench_realtime.py"),
            "--files", "200", "--agents", "2", "--watch-rounds", "1", "--interval-rounds", "1",
            "--interval", "2", "--idle-seconds", "1", "--keep", str(tmp_path),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "watch        n=  2" in out and "interval 2 s n=  2" in out
    assert "`corral fleet show --json` said tainted" in out
    assert "directories watched, 0 unwatched" in out
