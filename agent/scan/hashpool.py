"""Forked hashing processes fed through pipes, so every core hashes while the scan walks.

Why not :mod:`multiprocessing`: its pool moves every batch through pickling
and two helper threads in the parent, and those threads compete for the GIL
with the walk, which is the parent's real work. Here the parent writes each
batch to a worker's pipe as one :mod:`marshal` message and reads the digests
back when they are ready; there are no threads and nothing else to share.

A worker runs one function on each batch: :func:`agent.scan.hashing.hash_any` unless
the pool is made with another (the image bake's tar walk, for one). It exits when
its job pipe closes (the scan ended, or the parent died), so no worker outlives a
scan.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import signal
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError
from agent.scan import hashing

_LENGTH = struct.Struct("<Q")

Finished = list[tuple[object, Any]]
"""Batches whose results came back: (the caller's tag, what the work function returned;
for hashing, one outcome per file)."""


class WorkerError(AgentError):
    """A worker process died or broke its pipe; the scan (or bake) cannot be completed."""


def _write_message(fd: int, value: Any) -> None:
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


def _serve(jobs: int, results: int, work: Callable[[Any], object]) -> None:
    """A worker's life: run ``work`` on each batch from ``jobs``, answer on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the parent, which decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent stops the workers itself
    while (batch := _read_message(jobs)) is not None:
        _write_message(results, work(batch))


_PARENT_ENDS: set[int] = set()
"""The parent's ends of every live worker's pipes, of every pool in this process.

A worker closes them all as it starts: holding another worker's job pipe
(of its own pool or another one alive in the parent), it would keep that
worker from ever seeing its pipe close. Nothing else is closed: libraries
that survive a fork (gRPC's event engine, for one) may still use theirs.
"""


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

    def __init__(self, workers: int, *, work: Callable[[Any], object] = hashing.hash_any) -> None:
        """``work`` runs in the workers on each batch; batches and results are what
        :mod:`marshal` carries."""
        self.workers = workers
        self._work = work
        self._workers: list[_Worker] = []

    def _start(self) -> None:
        for _ in range(self.workers):
            jobs_read, jobs_write = os.pipe()
            results_read, results_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child; exercised by every scan
                status = 1
                try:
                    for fd in (jobs_write, results_read, *_PARENT_ENDS):
                        with contextlib.suppress(OSError):  # one already gone is no reason to die
                            os.close(fd)
                    _serve(jobs_read, results_write, self._work)
                    status = 0
                finally:
                    os._exit(status)
            os.close(jobs_read)
            os.close(results_write)
            self._workers.append(_Worker(pid, jobs_write, results_read))
            _PARENT_ENDS.update((jobs_write, results_read))

    def start(self) -> None:
        """Fork the workers now, if not yet (:meth:`submit` does on its first call)."""
        if not self._workers:
            self._start()

    def submit(self, tag: object, jobs: object) -> Finished:
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
            raise WorkerError(f"worker process {worker.pid} died during the scan") from exc
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
            result = _read_message(fd)
            if result is None:  # the pipe ended before a whole answer
                raise WorkerError(f"worker process {worker.pid} died during the scan")
            finished.append((worker.tags.popleft(), result))
        return finished

    def close(self) -> None:
        """Stop the workers: at once if batches are still out, else when they see the end."""
        for worker in self._workers:
            if worker.tags:
                os.kill(worker.pid, signal.SIGKILL)
            _PARENT_ENDS.discard(worker.jobs)
            os.close(worker.jobs)
        for worker in self._workers:
            os.waitpid(worker.pid, 0)
            _PARENT_ENDS.discard(worker.results)
            os.close(worker.results)
        self._workers = []
