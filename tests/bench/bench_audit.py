"""Benchmark: auditors' queries over a 1,000,000-record audit log in SQLite.

Target (issue 5): one instance's history in well under a second, a fleet-wide
conformance snapshot in seconds. The history is generated as a simulated fleet
(launches, flaps to unknown and back, drift, taint, replacement steps,
retirements, rollouts) and appended through ``SqliteAuditLog.bulk_append``: one
transaction, but every record is hashed and chained exactly as ``append`` does,
and the benchmark verifies the whole chain at the end.

Target (issue 15): ``corral audit report`` over the whole 1,000,000-record
history in at most 10 s, from each of its sources: the store file
(``--data-dir``), an export of it (``--file``, written once by ``corral audit
export``) and a controller serving a copy of it (``--controller``, started here
on a loopback port). Each report is timed as an auditor runs it (a fresh
``corral audit report`` process writing the HTML page, chain verification
included), in rounds alternating with a baseline measured in the same run:
reading every record through ``AuditLog.records()``. Medians, their ratio to
the baseline and the CPU the report used are printed.

Usage: ``python tests/bench/bench_audit.py [--records N] [--db FILE] [--keep]
[--report-rounds N] [--report-from data-dir,file,controller]``
(``--report-rounds 0`` skips the report).
Prints generation, query, checkpoint, report and verification times; exits 1
if the chain does not verify (timings are reported, not enforced).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.audit import events as ev
from controller.audit.record import Event
from controller.audit.sqlite import SqliteAuditLog
from controller.demo.fleet import free_port, wait_for
from controller.store.sqlite import SqliteStore

GROUPS = [f"group-{n}" for n in range(20)]
IMAGES = [f"app@sha256:{n:064x}" for n in range(1, 6)]
LIVE_TARGET = 5_000
T = TypeVar("T")


def fleet_history(records: int, seed: int = 5) -> Iterator[Event]:
    """A plausible fleet's life, ``records`` events long, one simulated second apart."""
    rng = random.Random(seed)
    now = 1_767_225_600_000
    produced = 0
    next_id = 0
    desired = dict.fromkeys(GROUPS, IMAGES[0])
    live: list[tuple[str, str]] = []
    running: dict[str, str] = {}  # instance -> the image it was launched from

    def emit(event: Event) -> Event:
        nonlocal produced
        produced += 1
        return event

    for n, image in enumerate(IMAGES):
        yield emit(
            ev.image_registered(
                image,
                at_ms=now + n,
                actor="operator:builder",
                digest=image[4:],
                manifest_digest=f"sha256:{n:064x}",
            )
        )
    for group in GROUPS:
        yield emit(
            ev.group_created(
                group, at_ms=now, actor="operator:alice", image=IMAGES[0], mode="enforce"
            )
        )

    def transition(instance: str, group: str, old: str | None, new: str, **kw: str) -> Event:
        return emit(
            ev.instance_transition(
                instance,
                at_ms=now,
                actor="controller",
                group=group,
                image=running.setdefault(instance, desired[group]),
                from_state=old,
                to_state=new,
                **kw,
            )
        )

    while produced < records:
        now += 1000
        roll = rng.random()
        if len(live) < LIVE_TARGET or roll < 0.05:
            instance, group = f"i-{next_id:08d}", rng.choice(GROUPS)
            next_id += 1
            live.append((instance, group))
            yield transition(instance, group, None, "pending")
            yield transition(instance, group, "pending", "conformant")
        elif roll < 0.60:
            instance, group = rng.choice(live)
            yield transition(instance, group, "conformant", "unknown", reason="silent")
            yield transition(instance, group, "unknown", "conformant")
        elif roll < 0.95:
            index = rng.randrange(len(live))
            old, group = live[index]
            new = f"i-{next_id:08d}"
            next_id += 1
            image = running[old]
            yield emit(
                ev.drift_evidence(
                    old,
                    at_ms=now,
                    actor=f"agent:{old}",
                    group=group,
                    image=image,
                    kind="file",
                    modified=2,
                    first_paths=["/etc/passwd", "/usr/bin/sudo"],
                )
            )
            yield emit(
                ev.taint(
                    old,
                    at_ms=now,
                    actor="controller",
                    group=group,
                    image=image,
                    source="agent",
                    drift_kind="file",
                    reason="files changed",
                )
            )
            yield transition(old, group, "conformant", "tainted")
            for phase in ("planned", "launching"):
                yield emit(
                    ev.replacement_step(
                        at_ms=now,
                        actor="controller",
                        group=group,
                        replacement_id=f"r-{new}",
                        idempotency_key=f"k-{new}",
                        phase=phase,
                        old_instance=old,
                        new_instance=new,
                        image=image,
                    )
                )
            yield transition(old, group, "tainted", "replacing")
            yield transition(new, group, None, "pending", replaces=old)
            yield transition(new, group, "pending", "conformant")
            yield transition(old, group, "replacing", "retired")
            live[index] = (new, group)
        else:
            group = rng.choice(GROUPS)
            target = rng.choice(IMAGES)
            yield emit(
                ev.rollout(
                    group,
                    at_ms=now,
                    actor="operator:carol",
                    from_image=desired[group],
                    to_image=target,
                )
            )
            desired[group] = target


def timed(label: str, fn: Callable[[], T], repeat: int = 1) -> T:
    times: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    shown = statistics.median(times)
    print(
        f"{label:<52} {shown * 1000:10.2f} ms" + (f"  (median of {repeat})" if repeat > 1 else "")
    )
    return result


REPORT_PATHS = ("data-dir", "file", "controller")


class ReportSources:
    """The three places a report is made from, over the same records: the store file
    (``--data-dir``), an export of it (``--file``) and a controller serving a copy of it
    (``--controller``, started here on a loopback port and stopped at the end)."""

    def __init__(self, path: Path, last_ms: int, paths: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="corral-bench-report-"))
        # The processes run this tree's code (``-m`` puts the working directory first).
        self.tree = Path(__file__).resolve().parents[2]
        self.env = {**os.environ, "PYTHONPATH": str(self.tree)}
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        (self.data_dir / "corral.db").symlink_to(path.resolve())
        self.export = self.root / "all.audit.jsonl"
        self.server: subprocess.Popen[bytes] | None = None
        self.address = ""
        if "file" in paths:
            start = time.perf_counter()
            self.corral(
                "audit", "export", "--data-dir", str(self.data_dir), "--since", "0",
                "--until", str(last_ms), "--out", str(self.export),
            )  # fmt: skip
            print(f"{'corral audit export (the --file source)':<52} {_ms(start)}")
        if "controller" in paths:
            self.serve(path)

    def corral(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "controller.cli.main", *argv]
        done = subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=self.tree, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"corral {' '.join(argv[:2])} failed: {done.stderr.strip()}")
        return done

    def serve(self, path: Path) -> None:
        """A controller store holding a copy of the audit records, served on a free port."""
        store_dir = self.root / "controller"
        SqliteStore(store_dir).close()
        with sqlite3.connect(store_dir / "corral.db", isolation_level=None) as conn:
            conn.execute("ATTACH ? AS bench", (str(path),))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO audit_records SELECT * FROM bench.audit_records")
            conn.execute("INSERT INTO audit_checkpoints SELECT * FROM bench.audit_checkpoints")
            conn.execute("DELETE FROM audit_head")
            conn.execute("INSERT INTO audit_head SELECT * FROM bench.audit_head")
            conn.execute("COMMIT")
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "controller.cli.serve", "serve", "--data-dir", str(store_dir),
            "--listen", self.address, "--metrics-listen", "",
        ]  # fmt: skip
        self.server = subprocess.Popen(
            command, env=self.env, cwd=self.tree, stderr=subprocess.DEVNULL
        )
        server = self.server

        def accepting() -> bool:  # serving once it accepts connections
            if server.poll() is not None:
                raise SystemExit("the controller did not start")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        if not wait_for(accepting, timeout=120, step=0.1):
            raise SystemExit("the controller did not start")

    def report(self, where: str, first_ms: int, last_ms: int, *extra: str) -> str:
        """Run ``corral audit report`` from ``where``; return its first line of output."""
        source = {
            "data-dir": ("--data-dir", str(self.data_dir)),
            "file": ("--file", str(self.export)),
            "controller": ("--controller", self.address, "--timeout", "600"),
        }[where]
        out = self.root / f"report-{where}.{'json' if 'json' in extra else 'html'}"
        argv = ("--from", str(first_ms), "--to", str(last_ms), "--out", str(out), *extra)
        done = self.corral("audit", "report", *source, *argv)
        return done.stdout.strip().splitlines()[0]

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=60)
        shutil.rmtree(self.root)


def bench_report(
    log: SqliteAuditLog, path: Path, first_ms: int, last_ms: int, *, rounds: int, paths: list[str]
) -> None:
    """``corral audit report`` from each source vs reading every record, alternating rounds."""
    last_ms = max(last_ms, first_ms + 1)
    sources = ReportSources(path, last_ms, paths)
    try:
        reads: list[float] = []
        walls: dict[str, list[float]] = {where: [] for where in paths}
        cpus: dict[str, list[float]] = {where: [] for where in paths}
        lines: dict[str, str] = {}
        for _ in range(rounds):
            start = time.perf_counter()
            count = sum(1 for _ in log.records(until_ms=last_ms))
            reads.append(time.perf_counter() - start)
            for where in paths:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                lines[where] = sources.report(where, first_ms, last_ms)
                walls[where].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                # CPU of the report and its verifying worker (not the controller's):
                # what the machine's load cannot inflate.
                used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                cpus[where].append(used)
        read = statistics.median(reads)
        print(
            f"{'baseline: read every record (records())':<52} {read * 1000:10.2f} ms  ({count:,})"
        )
        for where in paths:
            wall = statistics.median(walls[where])
            print(
                f"{f'corral audit report from the {where}, HTML':<52} {wall * 1000:10.2f} ms"
                f"  (median of {rounds}, {wall / read:.2f}x the baseline; target <= 10 s:"
                f" {wall <= 10})"
            )
            print(f"  ... {lines[where]}")
            print(f"  ... CPU {statistics.median(cpus[where]):.1f} s (the report and its worker)")
        start = time.perf_counter()
        line = sources.report(paths[0], first_ms, last_ms, "--format", "json")
        print(f"{f'corral audit report from the {paths[0]}, JSON (one run)':<52} {_ms(start)}")
        print(f"  ... {line}")
    finally:
        sources.close()


def _ms(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1000:10.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="reuse or create this file")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--report-rounds", type=int, default=3, help="report rounds (0: skip)")
    parser.add_argument(
        "--report-from",
        default=",".join(REPORT_PATHS),
        help=f"the report's sources, comma-separated (default: {','.join(REPORT_PATHS)})",
    )
    args = parser.parse_args()
    path = args.db or Path(tempfile.mkdtemp(prefix="corral-bench-audit-")) / "corral.db"
    log = SqliteAuditLog.open(path)
    if log.head().seq == 0:
        start = time.perf_counter()
        head = log.bulk_append(fleet_history(args.records))
        seconds = time.perf_counter() - start
        print(
            f"generated {head.seq:,} chained records in {seconds:.1f} s"
            f" ({head.seq / seconds:,.0f}/s)"
        )
    head = log.head()
    print(f"file {path} {path.stat().st_size / 1e6:.0f} MB, head seq {head.seq:,}")
    conn = log._conn  # a benchmark may peek: the head's time and real instance ids
    (last_ms,) = conn.execute("SELECT at_ms FROM audit_head").fetchone()
    first_ms = 1_767_225_600_000
    mid_ms = (first_ms + last_ms) // 2

    rng = random.Random(1)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT instance_id FROM audit_records"
            " WHERE kind = 'instance.state' AND seq % 997 = 0 LIMIT 200"
        )
    ]
    sample = rng.sample(ids, min(20, len(ids)))
    histories = iter(sample * 2)
    history = timed(
        "instance history (one instance)",
        lambda: log.instance_history(next(histories)),
        repeat=len(sample),
    )
    print(f"  ... {len(history.records)} records for {history.instance_id}")
    snap = timed(
        "conformance snapshot, whole fleet, now", lambda: log.conformance_at(last_ms), repeat=3
    )
    print(f"  ... {snap.total:,} instances, ratio {snap.ratio:.4f}")
    past = timed(
        "conformance snapshot, whole fleet, mid-history",
        lambda: log.conformance_at(mid_ms),
        repeat=3,
    )
    print(f"  ... {past.total:,} instances then")
    timed(
        "conformance snapshot, one group, mid-history",
        lambda: log.conformance_at(mid_ms, group=GROUPS[3]),
        repeat=3,
    )
    images = timed("images (registrations, runs, desired spans)", log.image_history)
    print(f"  ... {len(images)} images, {sum(len(i.runs) for i in images):,} runs")
    if args.report_rounds > 0:
        paths = [p for p in args.report_from.split(",") if p]
        if not paths or set(paths) - set(REPORT_PATHS):
            parser.error(f"--report-from takes some of {', '.join(REPORT_PATHS)}")
        bench_report(log, path, first_ms, last_ms, rounds=args.report_rounds, paths=paths)
    checkpoint = timed(
        "checkpoint (snapshot of the fleet + append)",
        lambda: log.checkpoint(at_ms=last_ms, actor="bench", key=b"bench-key-0123456789"),
    )
    print(f"  ... {checkpoint.anchor}")
    result = timed("verify the whole chain", lambda: log.verify(key=b"bench-key-0123456789"))
    print(f"  ... {result.describe()}")
    log.close()
    if not args.keep and args.db is None:
        path.unlink()
        path.parent.rmdir()
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
