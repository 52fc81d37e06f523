"""Benchmark: rebuild-to-deploy, from ``corral image build`` to a group rolled to the new image.

Targets (issue 4), so nobody is tempted to patch an instance in place:

(a) ``corral image build`` of a 10,000-file root takes at most twice as long
    as ``tar -c`` of the same root, and repeating it gives the same bytes
    (measured with the functions of ``bench_image_build.py``);
(b) rolling a group of 10 local instances to a new image with the default
    budget (max(1, 10% of 10) = 1 replacement in flight, surge first)
    completes in at most 30 s: from ``corral rollout GROUP REF`` until all 10
    instances run the new image and report conformant and every old one is
    retired.

For (b) a real controller runs (``corral-controller serve``, SQLite, the demo's
short intervals, 127.0.0.1 on free ports); both images are built with
``corral image build``, imported with ``corral image import``, registered with
``corral image register``; the group is created with ``corral group create
--size 10 --mode enforce``. The fleet and the replacement rows are sampled
every 50 ms to print the timeline and the most replacements seen in flight at
once, which must not exceed the budget.

Usage: ``python tests/bench/bench_rollout.py [--files N] [--rounds R] [--instances N]
[--json] [--dir DIR]``. Exits 1 when builds differ, the rollout does not finish,
or the budget was exceeded (the 30 s and 2x targets are reported, not enforced:
timings on a shared machine are noisy).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.demo import fleet as support
from tests.bench.bench_image_build import _file_digest, _time_build, _time_tar
from tests.bench.treegen import generate
from tests.e2e.support import STATE, Fleet

ROLLOUT_TARGET_SECONDS = 30.0
BUILD_RATIO_TARGET = 2.0
FINISHED_PHASES = frozenset({"done", "abandoned", "cancelled"})


@dataclass
class BuildResult:
    files: int
    rounds: int
    tar_seconds: float
    build_seconds: float
    ratio: float
    byte_identical: bool
    image_digest: str
    tar_cpu_seconds: float | None
    build_cpu_seconds: float | None
    load_average: float


def _tar_times(root: Path, out: Path) -> tuple[float, float | None]:
    """Wall (and, when bench_image_build measures it, CPU) seconds of ``tar -c``."""
    timed: Any = _time_tar(root, out)
    return (timed[0], timed[1]) if isinstance(timed, tuple) else (timed, None)


def _build_times(root: Path, out: Path) -> tuple[float, float | None, str]:
    """Wall (and CPU, when measured) seconds of an image build, and its digest."""
    timed: Any = _time_build(root, out)
    return timed[0], (timed[1] if len(timed) == 3 else None), timed[-1]


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def measure_build(work: Path, *, files: int, rounds: int) -> BuildResult:
    """Median ``tar -c`` and image build times over ``rounds`` (after a warm-up round)."""
    root = work / "root"
    generate(root, files=files)
    tar_times: list[float] = []
    build_times: list[float] = []
    cpu_times: list[tuple[float | None, float | None]] = []
    digests: set[str] = set()
    tarballs: set[str] = set()
    for round_number in range(rounds + 1):
        tar_out, build_out = work / f"tar-{round_number}.tar", work / f"build-{round_number}"
        tar_seconds, tar_cpu = _tar_times(root, tar_out)
        build_seconds, build_cpu, digest = _build_times(root, build_out)
        digests.add(digest)
        tarballs.add(_file_digest(build_out / "image.tar"))
        tar_out.unlink()
        shutil.rmtree(build_out)
        if round_number:  # round 0 warms the page cache
            tar_times.append(tar_seconds)
            build_times.append(build_seconds)
            cpu_times.append((tar_cpu, build_cpu))
    shutil.rmtree(root)
    tar_median, build_median = statistics.median(tar_times), statistics.median(build_times)
    identical = len(digests) == 1 and tarballs == {d.removeprefix("sha256:") for d in digests}
    return BuildResult(
        files=files,
        rounds=rounds,
        tar_seconds=round(tar_median, 3),
        build_seconds=round(build_median, 3),
        ratio=round(build_median / tar_median, 2),
        byte_identical=identical,
        image_digest=next(iter(digests)),
        tar_cpu_seconds=_median([tar for tar, _ in cpu_times]),
        build_cpu_seconds=_median([build for _, build in cpu_times]),
        load_average=round(os.getloadavg()[0], 2),
    )


@dataclass
class Replacement:
    old: str
    new: str
    launched: float | None = None
    conformant: float | None = None
    old_retired: float | None = None


@dataclass
class RolloutResult:
    instances: int
    budget: int
    seconds: float | None
    finished: bool
    max_in_flight: int
    max_live: int
    replacements: list[Replacement] = field(default_factory=list)
    mean_step_seconds: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)


class Timeline:
    """Samples the fleet and the replacement rows; remembers when each thing first happened."""

    def __init__(self, fleet: Fleet, group: str, old_ids: set[str], started: float) -> None:
        self.fleet, self.group, self.old_ids, self.started = fleet, group, old_ids, started
        self.first_seen: dict[str, float] = {}
        self.conformant_at: dict[str, float] = {}
        self.retired_at: dict[str, float] = {}
        self.replaces: dict[str, str] = {}
        self.max_in_flight = 0
        self.max_live = 0

    def sample(self) -> None:
        now = round(time.monotonic() - self.started, 3)
        in_flight = sum(1 for _, _, phase in self.fleet.rows() if phase not in FINISHED_PHASES)
        self.max_in_flight = max(self.max_in_flight, in_flight)
        instances = self.fleet.instances(self.group)
        self.max_live = max(self.max_live, sum(1 for i in instances if STATE[i.state] != "retired"))
        for instance in instances:
            state = STATE[instance.state]
            self.first_seen.setdefault(instance.id, now)
            if instance.replaces:
                self.replaces[instance.id] = instance.replaces
            if state == "conformant":
                self.conformant_at.setdefault(instance.id, now)
            if state == "retired":
                self.retired_at.setdefault(instance.id, now)

    def replacements(self) -> list[Replacement]:
        rows = [
            Replacement(
                old=old,
                new=new,
                launched=self.first_seen.get(new),
                conformant=self.conformant_at.get(new),
                old_retired=self.retired_at.get(old),
            )
            for new, old in self.replaces.items()
            if old in self.old_ids
        ]
        return sorted(rows, key=lambda r: (r.launched is None, r.launched or 0.0))


def phase_means(replacements: list[Replacement]) -> dict[str, float | None]:
    """Mean seconds of each step: where a rollout's time goes."""
    done = [r for r in replacements if None not in (r.launched, r.conformant, r.old_retired)]
    steps: dict[str, list[float]] = {
        "rollout_to_first_launch": [],
        "launch_to_conformant": [],
        "conformant_to_old_retired": [],
        "old_retired_to_next_launch": [],
    }
    for n, r in enumerate(done):
        assert r.launched is not None and r.conformant is not None and r.old_retired is not None
        if n == 0:
            steps["rollout_to_first_launch"].append(r.launched)
        steps["launch_to_conformant"].append(r.conformant - r.launched)
        steps["conformant_to_old_retired"].append(r.old_retired - r.conformant)
        if n + 1 < len(done):
            following = done[n + 1].launched
            assert following is not None
            steps["old_retired_to_next_launch"].append(max(0.0, following - r.old_retired))
    return {k: round(statistics.mean(v), 3) if v else None for k, v in steps.items()}


def _corral(fleet: Fleet, *args: str) -> str:
    result = fleet.corral(*args)
    if result.returncode != 0:
        raise RuntimeError(f"corral {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _build_image(fleet: Fleet, version: str) -> str:
    """``corral image build`` + ``image import`` + ``image register``; returns the ref."""
    root = fleet.data / f"root-{version}"
    support.write_sample_root(root)
    (root / support.APP_CONF).write_text(f"version = {version}\n")
    out = fleet.data / "images" / version
    built = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "image", "build", str(root),
         "--name", "app", "--version", version, "--out", str(out),
         "--owner", f"{os.getuid()}:{os.getgid()}", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    ref = str(json.loads(built.stdout)["image_ref"])
    subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "image", "import", str(out),
         "--data-dir", str(fleet.data)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    _corral(fleet, "image", "register", str(out))
    return ref


def measure_rollout(work: Path, *, instances: int, timeout: float) -> RolloutResult:
    """Start a controller, bring a group up on v1, roll it to v2 and time it."""
    fleet = Fleet(work / "fleet")
    settings = support.DemoSettings()
    budget = max(1, instances // 10)
    try:
        fleet.start()
        v1, v2 = _build_image(fleet, "1"), _build_image(fleet, "2")
        _corral(fleet, "group", "create", "web", "--image", v1, "--mode", "enforce",
                "--size", str(instances))  # fmt: skip
        if not support.wait_for(lambda: fleet.conformant("web", instances), timeout=timeout):
            raise RuntimeError(f"the group did not come up: {fleet.states('web')}")
        old_ids = set(fleet.states("web"))
        digest = v2.partition("@")[2]
        started = time.monotonic()
        timeline = Timeline(fleet, "web", old_ids, started)
        _corral(fleet, "rollout", "web", v2)

        def rolled() -> bool:
            timeline.sample()
            states = fleet.states("web")
            retired = all(states.get(old) == "retired" for old in old_ids)
            return retired and fleet.conformant("web", instances, digest=digest)

        finished = support.wait_for(rolled, timeout=timeout, step=0.05)
        seconds = round(time.monotonic() - started, 3) if finished else None
        return RolloutResult(
            instances=instances,
            budget=budget,
            seconds=seconds,
            finished=finished,
            max_in_flight=timeline.max_in_flight,
            max_live=timeline.max_live,
            replacements=timeline.replacements(),
            mean_step_seconds=phase_means(timeline.replacements()),
            settings=asdict(settings),
        )
    finally:
        fleet.stop()


def _print_text(build: BuildResult | None, rollout: RolloutResult | None) -> None:
    if build is not None:
        print(f"(a) image build of {build.files} files (median of {build.rounds})")
        print(f"    tar -c:             {build.tar_seconds:.3f} s")
        print(f"    corral image build: {build.build_seconds:.3f} s")
        print(f"    ratio:              {build.ratio:.2f} (target <= {BUILD_RATIO_TARGET})")
        if build.tar_cpu_seconds and build.build_cpu_seconds:
            print(f"    CPU seconds:        tar {build.tar_cpu_seconds:.3f}, "
                  f"build {build.build_cpu_seconds:.3f}")  # fmt: skip
        print(f"    load average (1m):  {build.load_average:.2f}")
        print(f"    byte-identical:     {build.byte_identical} ({build.image_digest})")
    if rollout is not None:
        print(f"(b) rollout of {rollout.instances} local instances, budget {rollout.budget}")
        print(f"    settings: {rollout.settings}")
        print("    old -> new                          launched  conformant  old retired")
        for r in rollout.replacements:
            cells = [f"{t:8.2f}" if t is not None else "       -" for t in
                     (r.launched, r.conformant, r.old_retired)]  # fmt: skip
            print(f"    {r.old} -> {r.new:<16}  {cells[0]}  {cells[1]:>10}  {cells[2]:>11}")
        total = f"{rollout.seconds:.2f} s" if rollout.seconds is not None else "did not finish"
        print(f"    rolled in:          {total} (target <= {ROLLOUT_TARGET_SECONDS:g} s)")
        print(f"    max in flight:      {rollout.max_in_flight} (budget {rollout.budget})")
        steps = ", ".join(
            f"{name} {value:.2f} s"
            for name, value in rollout.mean_step_seconds.items()
            if value is not None
        )
        print(f"    mean step:          {steps}")
        print(f"    max live instances: {rollout.max_live} (group {rollout.instances})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="rollout timeout (s)")
    parser.add_argument("--skip-build", action="store_true", help="only measure the rollout")
    parser.add_argument("--skip-rollout", action="store_true", help="only measure the build")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="corral-bench-rollout-", dir=args.dir))
    try:
        build = None
        if not args.skip_build:
            (work / "build").mkdir()
            build = measure_build(work / "build", files=args.files, rounds=args.rounds)
        rollout = None
        if not args.skip_rollout:
            rollout = measure_rollout(work, instances=args.instances, timeout=args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        summary: dict[str, Any] = {
            "image_build": asdict(build) if build else None,
            "rollout": asdict(rollout) if rollout else None,
            "targets": {
                "build_ratio": BUILD_RATIO_TARGET,
                "rollout_seconds": ROLLOUT_TARGET_SECONDS,
            },
        }
        print(json.dumps(summary, indent=2))
    else:
        _print_text(build, rollout)
    failed = (build is not None and not build.byte_identical) or (
        rollout is not None and (not rollout.finished or rollout.max_in_flight > rollout.budget)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
