"""Benchmark corral's scanner against the tools an operator would otherwise use.

One run measures, on a deterministic image-like tree (tests/bench/treegen.py,
generated once and kept under ``--tree``) with the page cache warm:

- a bare Python ``os.scandir`` + ``lstat`` walk (the floor for any walk; best of 3);
- ``find ROOT -type f -print0 | xargs -0 sha256sum`` (the shell baseline);
- ``corral bake`` run as a subprocess, three times: wall time (runs 1 and 2),
  the peak RSS of its largest process (``ru_maxrss``, all runs), the peak PSS
  summed over the bake and its hashing workers (run 3, sampled with psutil,
  which costs CPU and so is not timed), and whether all runs wrote
  byte-identical manifests;
- a rescan of the unchanged tree with a warm stat cache, root included (in a
  child process, as the agent runs it, each time from the saved cache file,
  whose load is timed apart; best of 3);
- ``aide --init`` and ``aide --check`` when aide is installed (skipped otherwise).

Usage::

    python tests/bench/bench_scan.py [--files N] [--seed S] [--tree DIR]
                                     [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from tests.bench import treegen  # noqa: E402 - the bench's own generator, beside this file

MB = 1 << 20
TARGET_SPEEDUP = 5.0
TARGET_RESCAN_RATIO = 2.0
TARGET_RSS_MB = 120


def ensure_tree(cache_dir: Path, files: int, seed: int) -> tuple[Path, bool]:
    """The tree for (files, seed), generated unless a complete one is already there."""
    root = cache_dir / f"tree-{files}-{seed}"
    marker = cache_dir / f"tree-{files}-{seed}.done"
    if marker.exists() and root.is_dir():
        return root, False
    if root.exists():
        shutil.rmtree(root)
    cache_dir.mkdir(parents=True, exist_ok=True)
    treegen.generate(root, files=files, seed=seed)
    marker.write_text("complete\n")
    return root, True


def tree_stats(root: Path) -> dict[str, int]:
    files = dirs = total = 0
    for top, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        files += len(filenames)
        total += sum(os.lstat(os.path.join(top, name)).st_size for name in filenames)
    return {"files": files, "directories": dirs + 1, "bytes": total}


def warm_page_cache(root: Path) -> float:
    """Read every file once so that every measurement starts from a warm page cache."""
    started = time.perf_counter()
    buffer = bytearray(1 << 20)
    for top, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(top, name), "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
    return time.perf_counter() - started


def bare_walk(root: Path) -> tuple[float, int, float]:
    """os.scandir + lstat of every object, nothing else: (wall, objects, CPU seconds)."""
    cpu = time.process_time()
    started = time.perf_counter()
    count = 0
    stack = [os.fsencode(root)]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as listing:
            for child in listing:
                child.stat(follow_symlinks=False)
                count += 1
                if child.is_dir(follow_symlinks=False):
                    stack.append(child.path)
    return time.perf_counter() - started, count, time.process_time() - cpu


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_shell(command: str) -> tuple[float, int, float]:
    """Run a shell pipeline: (wall seconds, exit code, CPU seconds of all its processes)."""
    cpu = children_cpu()
    started = time.perf_counter()
    code = subprocess.run(command, shell=True, check=False).returncode
    return time.perf_counter() - started, code, children_cpu() - cpu


class PssSampler:
    """Samples the summed PSS of a process and its descendants until it exits."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.peak = 0
        self._pid = pid
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            parent = psutil.Process(self._pid)
        except psutil.Error:
            return
        while True:
            try:
                processes = [parent, *parent.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(self._interval)

    def join(self) -> None:
        self._thread.join(timeout=5)


def corral_command() -> tuple[list[str] | None, str]:
    """How to run ``corral bake`` (the console script beside this Python), or why not."""
    script = Path(sys.executable).with_name("corral")
    if not script.exists():
        return None, f"{script} not found"
    probe = subprocess.run([str(script), "bake", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        last = probe.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return None, f"corral bake --help failed: {' '.join(last)}"
    return [str(script)], ""


_CHILD_BAKE = """
import sys, hashlib
from agent.manifest.format import Manifest, digest_of
from agent.manifest.policy import Policy
from agent.scan.scanner import scan
root, out = sys.argv[1], sys.argv[2]
policy = Policy()
result = scan(root, policy)
encoded = Manifest.build(policy, result.entries).encode()
open(out + "/manifest.pb", "wb").write(encoded)
print(digest_of(encoded))
"""


_TIMED = (
    "import resource, subprocess, sys, time; started = time.perf_counter(); "
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss); "
    "sys.exit(code)"
)
"""Runs a command; prints its wall time, CPU time (with its workers) and largest ru_maxrss (KiB)."""


def bake_once(
    root: Path, out: Path, corral: list[str] | None, *, sample_pss: bool = False
) -> dict[str, Any]:
    """One bake in a child process: wall time, peak memory, what it wrote.

    The time is taken around the bake alone (inside a small wrapper process
    that also reads ``ru_maxrss``). Sampling PSS costs CPU that the bake would
    otherwise use, so only a run made with ``sample_pss`` measures it.
    """
    out.mkdir(parents=True, exist_ok=True)
    if corral is not None:
        command = [*corral, "bake", str(root), "--out", str(out), "--json"]
    else:
        command = [sys.executable, "-c", _CHILD_BAKE, str(root), str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", _TIMED, *command], stdout=subprocess.PIPE, cwd=REPO
    )
    sampler = PssSampler(process.pid) if sample_pss else None
    stdout, _ = process.communicate()
    if sampler is not None:
        sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"bake failed with exit code {process.returncode}: {' '.join(command)}")
    seconds, cpu_seconds, max_rss_kib = stdout.split()[-3:]
    return {
        "seconds": float(seconds),
        "cpu_seconds": float(cpu_seconds),
        "max_rss_mb": int(max_rss_kib) / 1024,
        "tree_pss_mb": sampler.peak / MB if sampler is not None else None,
        "manifest": (out / "manifest.pb").read_bytes(),
    }


_CHILD_RESCAN = """
import json, os, sys, time
from agent.manifest.policy import Policy
from agent.scan.scanner import scan
from agent.scan.statcache import StatCache
root, cache_file = sys.argv[1], sys.argv[2]
policy = Policy()
cache = StatCache(racy_window_ns=0)  # nothing touches the tree during the benchmark
started = time.perf_counter(); first = scan(root, policy, cache=cache); first_root = first.root
prime = time.perf_counter() - started
started = time.perf_counter(); cache.save(cache_file); save = time.perf_counter() - started
del first, cache  # the agent keeps no scan result between scans
best = load = None
for _ in range(3):
    # Like the agent's scan process, each rescan starts from the cache file.
    started = time.perf_counter(); cache = StatCache.load(cache_file, racy_window_ns=0)
    seconds = time.perf_counter() - started
    load = seconds if load is None else min(load, seconds)
    cpu = time.process_time()
    started = time.perf_counter(); again = scan(root, policy, cache=cache); root_hash = again.root
    seconds = time.perf_counter() - started
    if best is None or seconds < best:
        best, best_cpu = seconds, time.process_time() - cpu
    hashed, cached = again.files_hashed, again.files_cached
    del again, cache
print(json.dumps({"prime_seconds": prime, "rescan_seconds": best, "rescan_cpu_seconds": best_cpu,
                  "cache_save_seconds": save,
                  "cache_load_seconds": load, "cache_bytes": os.path.getsize(cache_file),
                  "files_hashed": hashed, "files_cached": cached,
                  "same_root": root_hash == first_root}))
"""


def rescan(root: Path, work: Path) -> dict[str, Any]:
    command = [sys.executable, "-c", _CHILD_RESCAN, str(root), str(work / "statcache")]
    output = subprocess.run(command, capture_output=True, check=True, cwd=REPO).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def aide(root: Path, work: Path) -> dict[str, Any]:
    """aide --init and --check over the tree, when aide is installed."""
    binary = shutil.which("aide")
    if binary is None:
        return {"skipped": "aide not installed"}
    config = work / "aide.conf"
    config.write_text(
        f"database_in=file:{work}/aide.db\n"
        f"database_out=file:{work}/aide.db.new\n"
        "gzip_dbout=no\n"
        "CorralBench = p+i+n+u+g+s+m+c+sha256\n"
        f"{root} CorralBench\n"
    )
    init, init_code, _ = timed_shell(f"{binary} --config={config} --init > /dev/null 2>&1")
    if init_code != 0:
        return {"skipped": f"aide --init failed with exit code {init_code}"}
    os.replace(work / "aide.db.new", work / "aide.db")
    check, check_code, _ = timed_shell(f"{binary} --config={config} --check > /dev/null 2>&1")
    return {"init_seconds": init, "check_seconds": check, "check_exit_code": check_code}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cache_dir = Path(args.tree or Path(tempfile.gettempdir()) / "corral-bench")
    started = time.perf_counter()
    root, generated = ensure_tree(cache_dir, args.files, args.seed)
    report: dict[str, Any] = {
        "tree": str(root),
        "generated_seconds": time.perf_counter() - started if generated else None,
        **tree_stats(root),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1m": os.getloadavg()[0],
    }
    report["warm_seconds"] = warm_page_cache(root)
    walks = sorted(bare_walk(root) for _ in range(3))  # best of three, like the rescan
    report["bare_walk_seconds"], report["bare_walk_objects"], report["bare_walk_cpu_seconds"] = (
        walks[0]
    )

    corral, unavailable = corral_command()
    report["bake_mode"] = "corral bake (subprocess)" if corral else "scan+build+encode (subprocess)"
    report["bake_mode_reason"] = unavailable
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as scratch:
        work = Path(args.keep) if args.keep else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        first = bake_once(root, work / "bake-1", corral)
        second = bake_once(root, work / "bake-2", corral)
        sampled = bake_once(root, work / "bake-3", corral, sample_pss=True)
        report["bake_seconds"] = first["seconds"]
        report["bake_again_seconds"] = second["seconds"]
        report["bake_cpu_seconds"] = min(first["cpu_seconds"], second["cpu_seconds"])
        runs = (first, second, sampled)
        report["bake_max_rss_mb"] = max(run["max_rss_mb"] for run in runs)
        report["bake_tree_pss_mb"] = sampled["tree_pss_mb"]
        report["deterministic"] = first["manifest"] == second["manifest"] == sampled["manifest"]
        report["manifest_bytes"] = len(first["manifest"])
        baseline = f"find {root} -type f -print0 | xargs -0 sha256sum > /dev/null"
        sha256sum, code, sha256sum_cpu = timed_shell(baseline)
        report["sha256sum_seconds"] = sha256sum if code == 0 else None
        report["sha256sum_cpu_seconds"] = sha256sum_cpu
        report["rescan"] = rescan(root, work)
        report["aide"] = aide(root, work)
    report["load_average_1m_after"] = os.getloadavg()[0]
    best_bake = min(report["bake_seconds"], report["bake_again_seconds"])
    if report["sha256sum_seconds"]:
        report["bake_speedup_vs_sha256sum"] = report["sha256sum_seconds"] / best_bake
    report["rescan_vs_bare_walk"] = report["rescan"]["rescan_seconds"] / report["bare_walk_seconds"]
    if "init_seconds" in report["aide"]:
        report["bake_speedup_vs_aide_init"] = report["aide"]["init_seconds"] / best_bake
    report["own_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def print_report(report: dict[str, Any]) -> None:
    gen = report["generated_seconds"]
    origin = f"generated in {gen:.1f} s" if gen else "cached"
    print(
        f"tree {report['tree']}: {report['files']} files, {report['directories']} directories, "
        f"{report['bytes'] / 1e9:.2f} GB ({origin})"
    )
    print(
        f"{report['cpus']} CPUs, load average {report['load_average_1m']:.2f} before, "
        f"{report['load_average_1m_after']:.2f} after; page cache warmed in "
        f"{report['warm_seconds']:.2f} s"
    )
    rescan = report["rescan"]
    rows = [
        (
            "bare walk (scandir + lstat)",
            report["bare_walk_seconds"],
            f"cpu {report['bare_walk_cpu_seconds']:.2f} s",
        ),
        (
            "find | xargs sha256sum",
            report["sha256sum_seconds"],
            f"cpu {report['sha256sum_cpu_seconds']:.2f} s",
        ),
        (
            report["bake_mode"],
            report["bake_seconds"],
            f"again {report['bake_again_seconds']:.2f} s; cpu {report['bake_cpu_seconds']:.2f} s "
            "(with workers)",
        ),
        (
            "rescan, warm stat cache",
            rescan["rescan_seconds"],
            f"cpu {rescan['rescan_cpu_seconds']:.2f} s; "
            f"first scan {rescan['prime_seconds']:.2f} s; cache file "
            f"{rescan['cache_bytes'] / MB:.1f} MB, saved {rescan['cache_save_seconds']:.2f} s, "
            f"loaded {rescan['cache_load_seconds']:.2f} s",
        ),
    ]
    aide = report["aide"]
    if "skipped" in aide:
        rows.append(("aide", None, f"skipped: {aide['skipped']}"))
    else:
        rows.append(("aide --init", aide["init_seconds"], ""))
        rows.append(("aide --check", aide["check_seconds"], ""))
    if report["bake_mode_reason"]:
        print(f"note: {report['bake_mode_reason']}; timed the same steps in a plain child process")
    for label, seconds, note in rows:
        shown = f"{seconds:7.2f} s" if seconds is not None else "      -  "
        print(f"  {label:<34} {shown}  {note}")
    speedup = report.get("bake_speedup_vs_sha256sum")
    if speedup is not None:
        verdict = "faster" if speedup >= 1 else "as fast, i.e. slower"
        print(f"bake vs sha256sum: {speedup:.1f}x {verdict} (target >= {TARGET_SPEEDUP:.0f}x)")
    if "bake_speedup_vs_aide_init" in report:
        print(f"bake vs aide --init: {report['bake_speedup_vs_aide_init']:.1f}x faster")
    print(
        f"rescan vs bare walk: {report['rescan_vs_bare_walk']:.2f}x "
        f"(target <= {TARGET_RESCAN_RATIO:.0f}x; rescan hashed {rescan['files_hashed']} files, "
        f"same root: {'yes' if rescan['same_root'] else 'NO'})"
    )
    print(
        f"bake peak memory: {report['bake_max_rss_mb']:.0f} MB RSS (largest process), "
        f"{report['bake_tree_pss_mb']:.0f} MB PSS (bake + workers) (target <= {TARGET_RSS_MB} MB)"
    )
    print(
        f"determinism (bake twice, byte-identical manifest.pb): "
        f"{'passed' if report['deterministic'] else 'FAILED'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark corral's scanner.")
    parser.add_argument("--files", type=int, default=100_000, help="regular files in the tree")
    parser.add_argument("--seed", type=int, default=1, help="tree generator seed")
    parser.add_argument("--tree", help="where generated trees are kept (default: TMPDIR)")
    parser.add_argument("--keep", help="keep bake outputs and the stat cache in this directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print_report(report)
    return 0 if report["deterministic"] and report["rescan"]["same_root"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
