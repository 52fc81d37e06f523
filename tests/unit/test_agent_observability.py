"""The agent's logs (JSON lines with context) and metrics (agreed names, valid exposition)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from agent.daemon.metrics import AgentMetrics, new_registry
from agent.logs import configure_logging
from agent.scan.pacing import ScanPacer, ScanStoppedError
from tests.fixtures.clock import FakeClock

CONTEXT = {"instance_id": "i-1", "group": "web", "image": "web@sha256:" + "a" * 64}


def test_every_log_line_is_json_with_instance_group_and_image() -> None:
    stream = io.StringIO()
    handler = configure_logging(level="INFO", context=CONTEXT, stream=stream)
    try:
        logging.getLogger("agent.test").info("scan done", extra={"entries": 3})
        logging.getLogger("agent.test").debug("not shown")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("agent.test").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["scan done", "failed"]
    for line in lines:
        assert {k: line[k] for k in CONTEXT} == CONTEXT
        assert line["time"].endswith("Z")
    assert lines[0]["entries"] == 3 and lines[0]["level"] == "info"
    assert "ValueError: boom" in lines[1]["exception"]


AGREED = {
    "corral_agent_scan_duration_seconds",
    "corral_agent_bytes_hashed_total",
    "corral_agent_files_hashed_total",
    "corral_agent_scan_errors_total",
    "corral_agent_reports_total",
    "corral_agent_report_duration_seconds",
    "corral_agent_buffered_reports",
    "corral_agent_last_report_timestamp_seconds",
    "corral_agent_drift",
    "corral_agent_watch_active",
    "corral_agent_watched_directories",
    "corral_agent_unwatched_directories",
    "corral_agent_watch_unwatched_ratio",
    "corral_agent_watch_events_total",
    "corral_agent_watch_rescanned_paths_total",
    "corral_agent_watch_full_rescans_total",
}
ALLOWED_LABELS = {"mode", "result", "reason", "le"}


def test_the_agreed_metrics_exist_with_bounded_labels_only() -> None:
    registry = new_registry()
    AgentMetrics(registry)
    names = set()
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            assert set(sample.labels) <= ALLOWED_LABELS, sample
    for name in AGREED:
        assert any(n == name or n.startswith(name + "_") for n in names), name
    assert "process_resident_memory_bytes" in names


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # CI installs it (.ci/setup-system) and fails on any skip
        pytest.skip("promtool is not installed (apt install prometheus, or .ci/setup-system)")
    registry = new_registry()
    metrics = AgentMetrics(registry)
    metrics.reports.labels(result="delivered").inc()
    metrics.scan_duration.labels(mode="full").observe(1.5)
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_pacer_holds_the_average_read_rate_to_the_budget() -> None:
    clock = FakeClock(0.0)
    pacer = ScanPacer(budget=1000, should_stop=lambda: False, clock=clock, sleep=clock.sleep)
    pacer(1000, 5000)  # 5 s of budget read at t=0: wait until t=5
    assert clock() == 5.0
    clock.set(20.0)
    pacer(2000, 6000)  # behind budget: no wait
    assert clock() == 20.0 and pacer.slept == 5.0


def test_the_pacer_without_a_budget_never_sleeps_and_stops_on_request() -> None:
    clock = FakeClock(0.0)
    stopping = [False]
    pacer = ScanPacer(budget=0, should_stop=lambda: stopping[0], clock=clock, sleep=clock.sleep)
    pacer(1000, 10**12)
    assert clock() == 0.0
    stopping[0] = True
    try:
        pacer(2000, 10**12)
    except ScanStoppedError:
        pass
    else:
        raise AssertionError("a stop request must abandon the scan")
