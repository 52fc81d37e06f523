"""Benchmark: ``corral image build`` of a 10,000-file root against ``tar -c`` of the same root.

Target (issue 4): the build takes at most twice as long as ``tar -c`` writing
an uncompressed tarball of the same tree, and repeating it gives the same
bytes. Both write a fresh file in the same directory each round, one right
after the other; the median of several rounds is compared, after one warm-up
round that fills the page cache.

Usage: ``python tests/bench/bench_image_build.py [--files N] [--rounds R] [--dir DIR]``.
Prints both medians (wall clock and CPU time), the ratio, the load average and
whether the repeated builds were identical; exits 1 if they were not (the
ratio is reported, not enforced: timings on a shared machine are noisy, and
the build uses two cores where tar uses one, so compare runs at a similar load).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.image.artifact import build_artifact
from agent.manifest.policy import Policy
from tests.bench.treegen import generate


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _time_tar(root: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``tar -c``."""
    cpu, started = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["tar", "-cf", str(out), "-C", str(root), "."], check=True)
    return time.perf_counter() - started, _cpu(resource.RUSAGE_CHILDREN) - cpu


def _time_build(root: Path, out: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds (all threads) of a build, and its image digest."""
    cpu, started = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    result = build_artifact(root, out, name="bench", version="1", policy=Policy())
    elapsed = time.perf_counter() - started
    return elapsed, _cpu(resource.RUSAGE_SELF) - cpu, result.image_digest


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="corral-bench-", dir=args.dir))
    try:
        root = work / "root"
        stats = generate(root, files=args.files)
        print(
            f"tree: {stats.files} files, {stats.directories} directories, {stats.total_bytes} bytes"
        )
        load_before = os.getloadavg()[0]
        tar_times: list[float] = []
        build_times: list[float] = []
        tar_cpu: list[float] = []
        build_cpu: list[float] = []
        digests: set[str] = set()
        tar_bytes: set[str] = set()
        for round_number in range(args.rounds + 1):
            tar_out = work / f"tar-{round_number}.tar"
            build_out = work / f"build-{round_number}"
            tar_seconds, tar_cpu_seconds = _time_tar(root, tar_out)
            build_seconds, build_cpu_seconds, digest = _time_build(root, build_out)
            digests.add(digest)
            tar_bytes.add(_file_digest(build_out / "image.tar"))
            tar_out.unlink()
            shutil.rmtree(build_out)
            if round_number:  # round 0 warms the page cache
                tar_times.append(tar_seconds)
                build_times.append(build_seconds)
                tar_cpu.append(tar_cpu_seconds)
                build_cpu.append(build_cpu_seconds)
        tar_median = statistics.median(tar_times)
        build_median = statistics.median(build_times)
        identical = len(digests) == 1 and tar_bytes == {d.removeprefix("sha256:") for d in digests}
        cpu = f"CPU {statistics.median(tar_cpu):.3f} s"
        print(f"tar -c:             {tar_median:.3f} s ({cpu}, median of {args.rounds})")
        cpu = f"CPU {statistics.median(build_cpu):.3f} s"
        print(f"corral image build: {build_median:.3f} s ({cpu}, median of {args.rounds})")
        print(f"ratio:              {build_median / tar_median:.2f} (target <= 2.0)")
        print(f"load average (1m):  {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
        print(f"byte-identical:     {identical} ({next(iter(digests))})")
        return 0 if identical else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
