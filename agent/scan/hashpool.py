"""Forked hashing processes fed through pipes, so every core hashes while the scan walks.

Why not :mod:`multiprocessing`: its pool moves every batch through pickling
and two helper threads in the parent, and those threads compete for the GIL
with the walk, which is the parent's real work. Here the parent writes each
batch to a worker's pipe as one :mod:`marshal` message and reads the digests
back when they are ready; there are no threads and nothing else to share.

A worker only ever runs :func:`agent.scan.hashing.hash_batch`. It exits when its job
pipe closes (the scan ended, or the parent died), so no worker outlives a scan.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import struct
from collections import deque
from dataclasses import dataclass, field

from agent.errors import AgentError
from agent.scan import hashing
from agent.scan.hashing import FileJob, Listed, Outcome, RangeBatch

_LENGTH = struct.Struct("<Q")
_MAX_FD = (1 << 31) - 1

Finished = list[tuple[object, list[Outcome | Listed]]]
"""Batches whose digests came back: (the caller's tag, one outcome per file)."""


class WorkerError(AgentError):
    """A hashing process died or broke its pipe; the scan cannot be completed."""


Batch = list[FileJob | bytes] | RangeBatch
"""What a worker hashes at once: files by path (:func:`~agent.scan.hashing.hash_batch`), or
files stored inside one file (:func:`~agent.scan.hashing.hash_ranges`)."""


def _write_message(fd: int, value: Batch | list[Outcome | Listed] | list[Outcome]) -> None:
    data = marshal.dumps(value)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int) -> object | None:
    header = _read_exact(fd, _LENGTH.size)
    if header is None:
        return None
    body = _read_exact(fd, _LENGTH.unpack(header)[0])
    return None if body is None else marshal.loads(body)


def _serve(jobs: int, results: int) -> None:
    """A worker's life: hash each batch from ``jobs`` and answer on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent, which decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent stops the workers itself
    while (batch := _read_message(jobs)) is not None:
        if isinstance(batch, tuple):  # marshal keeps a tuple a tuple
            _write_message(results, hashing.hash_ranges(*batch))
        else:
            _write_message(results, hashing.hash_batch(batch))  # type: ignore[arg-type]


def _keep_only(*fds: int) -> None:
    """Close every descriptor but ``fds`` and the standard three, in a worker just forked.

    Other workers' pipe ends (of this pool or of another one alive in the
    parent) must not stay open here, or a worker would never see its own
    job pipe close; nor need a worker hold the parent's files and sockets.
    """
    low = 3
    for fd in sorted(fds):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


@dataclass
class _Worker:
    pid: int
    jobs: int
    results: int
    tags: deque[object] = field(default_factory=deque)


class HashPool:
    """Worker processes that hash batches while the caller keeps walking.

    Batches are submitted with a caller-chosen tag and come back with it, from
    :meth:`submit` (batches already finished) and :meth:`drain` (all the rest).
    Each worker has at most ``MAX_IN_FLIGHT`` batches outstanding: a walk that
    runs ahead waits for a result, which bounds the memory held for pending
    files and keeps both pipes from ever filling up at once. Processes are
    forked on the first submit, so a scan with nothing to hash starts none.
    """

    MAX_IN_FLIGHT = 3

    def __init__(self, workers: int, *, niceness: int = 0) -> None:
        self.workers = workers
        self._niceness = niceness
        self._workers: list[_Worker] = []

    def _start(self) -> None:
        for _ in range(self.workers):
            jobs_read, jobs_write = os.pipe()
            results_read, results_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child; exercised by every scan
                status = 1
                try:
                    _keep_only(jobs_read, results_write)
                    if self._niceness:
                        os.nice(self._niceness)
                    _serve(jobs_read, results_write)
                    status = 0
                finally:
                    os._exit(status)
            os.close(jobs_read)
            os.close(results_write)
            self._workers.append(_Worker(pid, jobs_write, results_read))

    def start(self) -> None:
        """Fork the workers now, if not yet (before the caller starts threads of its own)."""
        if not self._workers:
            self._start()

    def submit(self, tag: object, jobs: Batch) -> Finished:
        """Queue a batch on the least busy worker; returns the batches finished so far."""
        self.start()
        finished = self._collect(block=False)
        worker = min(self._workers, key=lambda w: len(w.tags))
        while len(worker.tags) >= self.MAX_IN_FLIGHT:
            finished += self._collect(block=True)
            worker = min(self._workers, key=lambda w: len(w.tags))
        try:
            _write_message(worker.jobs, jobs)
        except BrokenPipeError as exc:
            raise WorkerError(f"hashing process {worker.pid} died during the scan") from exc
        worker.tags.append(tag)
        return finished

    def drain(self) -> Finished:
        """Wait for every submitted batch."""
        finished: Finished = []
        while any(worker.tags for worker in self._workers):
            finished += self._collect(block=True)
        return finished

    def _collect(self, *, block: bool) -> Finished:
        busy = {worker.results: worker for worker in self._workers if worker.tags}
        if not busy:
            return []
        ready, _, _ = select.select(list(busy), [], [], None if block else 0)
        finished: Finished = []
        for fd in ready:
            worker = busy[fd]
            outcomes = _read_message(fd)
            if not isinstance(outcomes, list):
                raise WorkerError(f"hashing process {worker.pid} died during the scan")
            finished.append((worker.tags.popleft(), outcomes))
        return finished

    def close(self) -> None:
        """Stop the workers: at once if batches are still out, else when they see the end."""
        for worker in self._workers:
            if worker.tags:
                os.kill(worker.pid, signal.SIGKILL)
            os.close(worker.jobs)
        for worker in self._workers:
            os.waitpid(worker.pid, 0)
            os.close(worker.results)
        self._workers = []
