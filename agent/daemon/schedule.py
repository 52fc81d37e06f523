"""The agent's process lifetime: the schedule, signals and a clean stop.

An APScheduler ``BackgroundScheduler`` with a single worker thread runs the
scan job at the configured interval, each run delayed by a random jitter so a
fleet started together does not scan (and report) in lockstep. When delivery
fails, a one-off retry job is armed at the backoff's delay, so buffered
reports go out as soon as the controller is back rather than at the next scan.
One worker means a retry never runs concurrently with a scan. In watch mode
(:mod:`agent.daemon.watch.mode`) each interval runs the watch's tick instead (a
heartbeat, or a safety-net scan), and event batches are queued on the same
worker as they come, so a batch never runs during a scan either.

SIGTERM and SIGINT stop the schedule, end a scan in progress (its child
process is terminated; the stat cache file is only ever replaced atomically),
cancel a delivery in flight (its report is kept), write every report still
queued to the outbox file (:meth:`Runner.persist`) and exit 0. The next start
delivers those reports first. A report whose delivery was cancelled may have
reached the controller; resent with the same ``seq`` and root, it is taken as
a duplicate.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent.daemon.runner import Runner, Schedule
from agent.daemon.watch.mode import WatchMode

log = logging.getLogger(__name__)


def _guarded(runner: Runner, step: str, work: Callable[[], float | None]) -> float | None:
    try:
        return work()
    except Exception:  # the schedule must survive any one failed round
        runner.count_unexpected()
        log.exception("unexpected failure during %s", step)
        return None


def run_scheduled(
    runner: Runner,
    schedule: Schedule,
    *,
    stop: threading.Event,
    watch: WatchMode | None = None,
    poll_seconds: float = 1.0,
) -> None:
    """Scan and report on ``schedule`` until ``stop`` is set.

    With ``watch``, each interval runs its tick (a heartbeat, or a safety-net
    scan) and its event batches run on the same single worker as they come.
    """
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
    )

    def arm_retry(delay: float | None) -> None:
        if delay is None or stop.is_set():
            return
        scheduler.add_job(
            retry,
            "date",
            run_date=datetime.now(UTC) + timedelta(seconds=delay),
            id="retry",
            replace_existing=True,
        )

    def tick() -> None:
        arm_retry(_guarded(runner, "a scan", watch.tick if watch else runner.tick))

    def batch(work: Callable[[], float | None]) -> None:
        if not stop.is_set():
            scheduler.add_job(lambda: arm_retry(_guarded(runner, "a watch batch", work)))

    def retry() -> None:
        arm_retry(_guarded(runner, "a delivery retry", runner.flush))

    scheduler.add_job(
        tick,
        IntervalTrigger(seconds=schedule.interval, jitter=schedule.jitter or None, timezone=UTC),
        id="scan",
        next_run_time=datetime.now(UTC),
    )
    if watch is not None:
        watch.start(batch)  # every directory is watched before the first scan starts
    scheduler.start()
    try:
        while not stop.wait(poll_seconds):
            pass
    finally:
        if watch is not None:
            watch.stop()
        runner.stop()
        scheduler.shutdown(wait=True)
        runner.persist()
        if watch is not None:
            watch.close()


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` (call from the main thread)."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
