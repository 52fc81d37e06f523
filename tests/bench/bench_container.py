"""Benchmark containers: the upper-directory check and baking the image archive.

One run, on a private Podman storage (nothing pulled, nothing left behind):

1. An image is made from a deterministic tree (tests/bench/treegen.py, the
   scan benchmark's generator; ``--files``, default 100,000) plus busybox,
   with ``podman import``, and saved with ``podman save --format oci-archive``
   (``--uncompressed`` unless ``--gzip``).
2. **Bake**: ``corral bake oci-archive:IMAGE`` against ``corral bake`` of the
   root ``podman image mount`` shows, both as subprocesses, alternating,
   ``--rounds`` each; medians; the two roots must be equal.
3. **Drift check**: a container of the image gets ``--changes`` changes with
   ``podman exec`` (modified, added and removed files). Then, alternating,
   ``--checks`` rounds each of: the upper-directory check
   (:class:`agent.daemon.container.UpperDirCheck`, warm, as the agent runs it each
   interval), a rescan of the merged root with a warm stat cache (what the
   agent did before, in-process: its cheapest form), and ``podman diff``.
   All three must see the changes; the check and the rescan must agree on the
   root and the evidence. Medians.

Targets (issue 13): the check <= 10 ms, or >= 50x faster than the rescan and
faster than ``podman diff``; the archive bake <= 1.2x the mounted-root bake.

Usage::

    python tests/bench/bench_container.py [--files N] [--changes N] [--rounds N]
                                          [--checks N] [--gzip] [--tree DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from agent.daemon.container import UpperDirCheck  # noqa: E402
from agent.daemon.scanjob import ScanOutcome, ScanRequest, scan_and_compare  # noqa: E402
from agent.image.bake import bake  # noqa: E402
from agent.manifest.policy import DEFAULT_EXCLUDE, Policy  # noqa: E402
from agent.scan.statcache import StatCache  # noqa: E402
from tests.bench import treegen  # noqa: E402 - the bench's own generator, beside this file

TARGET_CHECK_MS = 10.0
TARGET_CHECK_SPEEDUP = 50.0
TARGET_BAKE_RATIO = 1.2
RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab")
POLICY = Policy(exclude=(*DEFAULT_EXCLUDE, *RUNTIME_FILES))
TREE_DIR = "/usr/share/bench"
APPLETS = ("sh", "sleep", "echo", "rm", "cat", "mkdir")


class Podman:
    """``podman`` on a private storage under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "run"),
                *args]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 1800) -> str:
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def cleanup(self) -> None:
        subprocess.run(self.argv("rm", "-a", "-f", "-t", "0"), capture_output=True, check=False)
        overlay = self.base / "root" / "overlay"
        if os.path.ismount(overlay):
            subprocess.run(["umount", "-l", str(overlay)], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def ensure_tree(cache: Path, files: int, seed: int) -> Path:
    root = cache / f"tree-{files}-{seed}"
    marker = cache / f"tree-{files}-{seed}.done"
    if not (marker.exists() and root.is_dir()):
        shutil.rmtree(root, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        treegen.generate(root, files=files, seed=seed)
        marker.write_text("complete\n")
    return root


def make_image(podman: Podman, tree: Path, work: Path) -> str:
    """Import busybox + the tree (under TREE_DIR) as ``localhost/corral-bench:1``."""
    staging = work / "staging"
    (staging / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", staging / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", staging / "bin" / applet)
    tarball = work / "rootfs.tar"
    owner = ["--numeric-owner", "--owner=0", "--group=0"]
    subprocess.run(["tar", "-cf", str(tarball), *owner, "-C", str(staging), "bin"], check=True)
    transform = f"s,^\\.,{TREE_DIR.lstrip('/')},"
    subprocess.run(
        ["tar", "-rf", str(tarball), *owner, "-C", str(tree), f"--transform={transform}", "."],
        check=True,
    )
    tag = "localhost/corral-bench:1"
    podman("import", "--change", 'CMD ["/bin/sleep", "3600"]', str(tarball), tag)
    tarball.unlink()
    return tag


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def corral_bake(source: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "bake", source, "--out", str(out),
         "--name", "bench", "--version", "1"],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return time.perf_counter() - started


@contextmanager
def mounted(podman: Podman, tag: str) -> Iterator[str]:
    root = podman("image", "mount", tag)
    try:
        yield root
    finally:
        podman("image", "unmount", tag)


def bench_bake(podman: Podman, tag: str, archive: Path, work: Path, rounds: int) -> dict[str, Any]:
    archive_times: list[float] = []
    mounted_times: list[float] = []
    with mounted(podman, tag) as root:
        for _ in range(rounds):  # alternating rounds
            archive_times.append(corral_bake(f"oci-archive:{archive}", work / "bake-archive"))
            mounted_times.append(corral_bake(root, work / "bake-mounted"))
    same = (work / "bake-archive" / "manifest.pb").read_bytes() == (
        work / "bake-mounted" / "manifest.pb"
    ).read_bytes()
    archive_s = statistics.median(archive_times)
    mounted_s = statistics.median(mounted_times)
    return {
        "archive_bake_s": round(archive_s, 3),
        "mounted_bake_s": round(mounted_s, 3),
        "ratio": round(archive_s / mounted_s, 3),
        "identical_manifests": same,
        "archive_bytes": archive.stat().st_size,
    }


def make_changes(podman: Podman, container: str, tree: Path, count: int) -> list[str]:
    """Modify, add and remove ``count`` files in the container; returns the changed paths."""
    files = sorted(p for p in tree.rglob("*") if p.is_file() and p.stat().st_size < 65536)
    step = max(1, len(files) // (count + 1))
    picked = [TREE_DIR + "/" + str(p.relative_to(tree)) for p in files[::step][:count]]
    commands: list[str] = []
    changed: list[str] = []
    for number, path in enumerate(picked):
        if number % 3 == 0:
            commands.append(f"echo patched >> {path}")
            changed.append(path)
        elif number % 3 == 1:
            commands.append(f"echo new > {path}.new")
            changed.append(path + ".new")
        else:
            commands.append(f"rm {path}")
            changed.append(path)
    podman("exec", container, "sh", "-c", " && ".join(commands))
    return changed


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def evidence_of(outcome: ScanOutcome) -> tuple[bytes, list[tuple[str, bytes]]]:
    changes = outcome.evidence.changes if outcome.evidence else ()
    return outcome.root, [(c.kind.value, c.path) for c in changes]


def bench_check(
    podman: Podman, tag: str, archive: Path, tree: Path, work: Path, changes: int, checks: int
) -> dict[str, Any]:
    baked = bake(f"oci-archive:{archive}", str(work / "baseline"), policy=POLICY)
    container = podman("run", "-d", tag)
    upper = podman("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", container)
    merged = podman("inspect", "--format", "{{.GraphDriver.Data.MergedDir}}", container)
    changed = make_changes(podman, container, tree, changes)
    request = ScanRequest(
        root=merged, policy=POLICY, full_rehash=False, baseline_root=baked.manifest.root,
        manifest_path=baked.manifest_path, max_changes=10_000, max_evidence_bytes=1 << 20,
    )  # fmt: skip
    check = UpperDirCheck(merged_dir=merged, upper_dir=upper, policy=POLICY)
    first, outcome = timed(lambda: check.run(request))  # loads the baseline, hashes the changes
    cache = StatCache()
    scan_and_compare(request, cache=cache)  # warms the stat cache
    upper_times: list[float] = []
    rescan_times: list[float] = []
    diff_times: list[float] = []
    rescanned = outcome
    diff_lines: list[str] = []
    for _ in range(checks):
        seconds, outcome = timed(lambda: check.run(request))
        upper_times.append(seconds)
        seconds, rescanned = timed(lambda: scan_and_compare(request, cache=cache))
        rescan_times.append(seconds)
        seconds, text = timed(lambda: podman("diff", container))
        diff_times.append(seconds)
        diff_lines = text.splitlines()
    agree = evidence_of(outcome) == evidence_of(rescanned)
    seen = {path.decode() for _, path in evidence_of(outcome)[1]}
    podman("rm", "-f", "-t", "0", container)
    upper_ms, rescan_ms, diff_ms = map(median_ms, (upper_times, rescan_times, diff_times))
    return {
        "entries": outcome.entry_count,
        "changes_made": len(changed),
        "changes_seen": sorted(seen),
        "all_changes_seen": set(changed) <= seen,
        "podman_diff_sees_changes": all(any(p in line for line in diff_lines) for p in changed),
        "check_agrees_with_rescan": agree,
        "first_check_ms": round(first * 1000, 2),
        "upper_check_ms": round(upper_ms, 3),
        "rescan_ms": round(rescan_ms, 1),
        "podman_diff_ms": round(diff_ms, 1),
        "speedup_vs_rescan": round(rescan_ms / upper_ms, 1),
        "speedup_vs_podman_diff": round(diff_ms / upper_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="files in the image tree")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--changes", type=int, default=10, help="files changed in the container")
    parser.add_argument("--rounds", type=int, default=3, help="bake rounds of each kind")
    parser.add_argument("--checks", type=int, default=15, help="drift-check rounds of each kind")
    parser.add_argument("--gzip", action="store_true", help="save the archive with gzip layers")
    parser.add_argument(
        "--tree",
        type=Path,
        default=Path(tempfile.gettempdir()) / "corral-bench-trees",
        help="where generated trees are kept between runs",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None or not os.path.exists("/bin/busybox"):
        print("bench_container: needs podman and /bin/busybox", file=sys.stderr)
        return 2
    tree = ensure_tree(args.tree, args.files, args.seed)
    work = Path(tempfile.mkdtemp(prefix="corral-bench-container-"))
    podman = Podman(work / "storage")
    try:
        tag = make_image(podman, tree, work)
        archive = work / "image.tar"
        compression = [] if args.gzip else ["--uncompressed"]
        podman("save", "--quiet", "--format", "oci-archive", *compression, "-o", str(archive), tag)
        results = {
            "files": args.files,
            "layers": "gzip" if args.gzip else "uncompressed",
            "bake": bench_bake(podman, tag, archive, work, args.rounds),
            "check": bench_check(podman, tag, archive, tree, work, args.changes, args.checks),
        }
    finally:
        podman.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    check, baked = results["check"], results["bake"]
    check_ok = check["upper_check_ms"] <= TARGET_CHECK_MS or (
        check["speedup_vs_rescan"] >= TARGET_CHECK_SPEEDUP and check["speedup_vs_podman_diff"] > 1
    )
    results["targets_met"] = {
        "check": bool(check_ok and check["all_changes_seen"] and check["check_agrees_with_rescan"]),
        "bake": bool(baked["ratio"] <= TARGET_BAKE_RATIO and baked["identical_manifests"]),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"image: {args.files} files + busybox, {results['layers']} layer, "
          f"archive {baked['archive_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    print(f"bake   oci-archive {baked['archive_bake_s']:.2f} s vs mounted root "
          f"{baked['mounted_bake_s']:.2f} s: {baked['ratio']:.2f}x "
          f"(target <= {TARGET_BAKE_RATIO}x), "
          f"identical manifests: {baked['identical_manifests']}")  # fmt: skip
    print(f"check  {check['changes_made']} changes in a container of {check['entries']} entries: "
          f"upper dir {check['upper_check_ms']:.2f} ms (first {check['first_check_ms']:.1f} ms), "
          f"rescan {check['rescan_ms']:.0f} ms ({check['speedup_vs_rescan']:.0f}x), "
          f"podman diff {check['podman_diff_ms']:.0f} ms ({check['speedup_vs_podman_diff']:.0f}x); "
          f"all seen: {check['all_changes_seen']}, agrees with rescan: "
          f"{check['check_agrees_with_rescan']}")  # fmt: skip
    print(f"targets met: {results['targets_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
