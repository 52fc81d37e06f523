"""``corral-agent``: flags reach the config, bad input exits 2, the schedule runs and stops."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.daemon.cli import _flags, build_parser, main
from agent.daemon.config import load_config
from agent.daemon.runner import Schedule
from agent.daemon.schedule import run_scheduled
from tests.unit.test_agent_runner import Harness


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("corral-agent ")


def test_flags_override_the_environment() -> None:
    args = build_parser().parse_args(
        ["run", "--controller", "c:1", "--interval", "5", "--full-rehash-every", "4", "--once"]
    )
    env = {"CORRAL_AGENT_INTERVAL": "60", "CORRAL_AGENT_GROUP": "batch"}
    config = load_config(flags=_flags(args), env=env)
    assert config.interval == 5 and config.group == "batch" and config.once
    assert config.full_rehash_every == 4 and config.full_rehash_interval is None


def test_both_rehash_flags_are_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(
            [
                "run",
                "--controller",
                "c:1",
                "--full-rehash-every",
                "2",
                "--full-rehash-interval",
                "9",
            ]
        )
    assert caught.value.code == 2


def test_bad_settings_exit_2_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CORRAL_AGENT_INTERVAL", "-1")
    assert main(["run", "--controller", "c:1"]) == 2
    assert "interval must be positive" in capsys.readouterr().err


def test_a_missing_image_json_exits_2(tmp_path: Path) -> None:
    code = main(
        [
            "run",
            "--controller",
            "127.0.0.1:1",
            "--image-json",
            str(tmp_path / "absent.json"),
            "--data-dir",
            str(tmp_path / "state"),
        ]
    )
    assert code == 2
    assert not (tmp_path / "state").exists()


def test_a_data_dir_inside_the_watched_root_must_be_excluded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = Harness(tmp_path)
    (harness.root / "etc" / "machine-id").write_text("0" * 32)
    image_json = tmp_path / "image" / "image.json"
    monkeypatch.setenv("CORRAL_AGENT_CONTROLLER", "127.0.0.1:1")
    args = ["run", "--root", str(harness.root), "--image-json", str(image_json)]
    assert main([*args, "--data-dir", str(harness.root / "etc" / "corral")]) == 2
    assert not (harness.root / "etc" / "corral").exists()
    assert "inside the watched root" in capsys.readouterr().err


def test_the_schedule_scans_reports_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(tmp_path)
    stop = threading.Event()
    original = harness.runner.tick

    def tick_then_stop() -> float | None:
        delay = original()
        stop.set()
        return delay

    monkeypatch.setattr(harness.runner, "tick", tick_then_stop)
    run_scheduled(harness.runner, Schedule(interval=60, jitter=0), stop=stop, poll_seconds=0.01)
    assert len(harness.transport.sent) == 1
    assert (harness.state / "statcache").exists()
