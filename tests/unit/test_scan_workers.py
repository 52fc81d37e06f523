"""Hashing processes never outlive a scan, and a dead one fails the scan loudly."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from pathlib import Path

import psutil
import pytest

from agent.manifest.format import EntryError
from agent.manifest.policy import Policy
from agent.scan import scanner as scan_module
from agent.scan.hashing import FileJob
from agent.scan.hashpool import HashPool, WorkerError
from agent.scan.scanner import scan
from controller.demo.fleet import wait_for

OPEN = Policy(exclude=())


_BYSTANDERS: set[int] = set()


@pytest.fixture(autouse=True)
def bystanders() -> None:
    """Children the test process already had (other suites' services): never workers."""
    _BYSTANDERS.clear()
    _BYSTANDERS.update(p.pid for p in psutil.Process().children())


def children() -> list[psutil.Process]:
    """Live children started since the test began: the scan's hashing workers."""
    return [
        p
        for p in psutil.Process().children()
        if p.pid not in _BYSTANDERS and p.status() != psutil.STATUS_ZOMBIE
    ]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for index in range(300):
        path = tmp_path / f"d{index % 5}" / f"f{index}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"%d" % index)
    return tmp_path


def test_the_pool_hashes_batches_and_returns_them_with_their_tags(tmp_path: Path) -> None:
    files: list[FileJob | bytes] = []
    for index in range(10):
        path = tmp_path / f"f{index}"
        path.write_bytes(b"x" * index)
        st = path.stat()
        files.append((os.fsencode(path), st.st_ino, st.st_size))
    pool = HashPool(2)
    try:
        finished = []
        for start in range(0, 10, 2):
            finished += pool.submit(start, files[start : start + 2])
        finished += pool.drain()
    finally:
        pool.close()
    tags = [tag for tag, _ in finished if isinstance(tag, int)]
    assert len(tags) == len(finished) and sorted(tags) == [0, 2, 4, 6, 8]
    for tag, outcomes in finished:
        assert isinstance(tag, int)
        assert outcomes == [hashlib.sha256(b"x" * i).digest() for i in (tag, tag + 1)]
    assert children() == []


def test_no_worker_outlives_a_scan(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_module, "BATCH_FILES", 7)
    scan(tree, OPEN, workers=2)
    assert children() == []


def test_an_abandoned_scan_stops_its_workers(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_module, "BATCH_FILES", 7)
    monkeypatch.setattr(scan_module, "_PROGRESS_EVERY", 50)

    def stop(entries: int, hashed: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(tree, OPEN, workers=2, progress=stop)
    assert children() == []


def test_a_worker_that_dies_fails_the_scan(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_module, "BATCH_FILES", 7)
    monkeypatch.setattr(scan_module, "_PROGRESS_EVERY", 50)
    killed: list[int] = []

    def kill_a_worker(entries: int, hashed: int) -> None:
        workers = children()
        if workers and not killed:
            killed.append(workers[0].pid)
            os.kill(workers[0].pid, signal.SIGKILL)

    with pytest.raises(WorkerError, match="died"):
        scan(tree, OPEN, workers=2, progress=kill_a_worker)
    assert killed
    assert children() == []


def test_workers_hash_ranges_of_a_file_with_holes_and_refuse_another_file(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    data = os.urandom(3 << 20)
    blob.write_bytes(data)
    st = blob.stat()
    files = [
        [(0, 10), (-1, 5), (100, 0), (20, 7)],  # a sparse file: data, a hole, data
        [(5, (3 << 20) - 5)],  # longer than a worker's buffer
        [],  # empty
        [(-1, 200_000)],  # holes only
        [(4096 * 3 + 1, 100)],
    ]

    def digest(ranges: list[tuple[int, int]]) -> bytes:
        parts = (bytes(n) if at < 0 else data[at : at + n] for at, n in ranges)
        return hashlib.sha256(b"".join(parts)).digest()

    pool = HashPool(1)
    try:
        path = os.fsencode(blob)
        pool.submit("ok", (path, st.st_dev, st.st_ino, files))
        pool.submit("other", (path, st.st_dev, st.st_ino + 1, files[:1]))
        pool.submit("past the end", (path, st.st_dev, st.st_ino, [[(len(data) - 5, 6)]]))
        finished = dict(pool.drain())
    finally:
        pool.close()
    assert finished["ok"] == [digest(ranges) for ranges in files]
    assert finished["other"] == [int(EntryError.VANISHED)]
    assert finished["past the end"] == [int(EntryError.UNREADABLE)]


def pipes_held(pid: int) -> set[str]:
    """The pipes ``pid`` has open (one it closes meanwhile may be left out)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return {link for link in held if link.startswith("pipe:")}


def test_a_worker_holds_no_other_workers_pipes() -> None:
    """Of its own pool or another: so each sees its own job pipe close, and a pool closes
    while another is alive."""
    first, second = HashPool(1), HashPool(2)
    try:
        first.start()
        second.start()  # forked while the first pool's pipes are open in the parent
        workers = {worker.pid: worker for pool in (first, second) for worker in pool._workers}
        own = {
            pid: {f"pipe:[{os.fstat(fd).st_ino}]" for fd in (worker.jobs, worker.results)}
            for pid, worker in workers.items()
        }

        def alone(pid: int) -> bool:
            others = set().union(*(pipes for other, pipes in own.items() if other != pid))
            held = pipes_held(pid)
            return own[pid] <= held and not held & others

        # each closes the others' pipes as it starts, which may take a moment
        assert wait_for(lambda: all(map(alone, workers)), timeout=10)
        first.close()
        assert len(children()) == 2
    finally:
        for worker in children():  # a failure above must not hang in close()
            worker.kill()
        first.close()
        second.close()
    assert children() == []
