"""The exec provider's error mapping and argument handling, with real subprocesses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from controller.providers import (
    LaunchSpec,
    PermanentProviderError,
    TemporaryProviderError,
    create_provider,
)
from controller.providers.exec import ExecConfig, ExecProvider

EMPTY_LIST = (sys.executable, "-c", "print('[]')")


def provider(launch: list[str], **settings: object) -> ExecProvider:
    config = ExecConfig(
        launch=tuple(launch),
        terminate=(sys.executable, "-c", "pass"),
        list=EMPTY_LIST,
        describe=(sys.executable, "-c", "print('null')"),
        **settings,  # type: ignore[arg-type]
    )
    return ExecProvider(config)


SPEC = LaunchSpec(
    group="web",
    image_ref="web@sha256:" + "a" * 64,
    image_digest="sha256:" + "a" * 64,
    instance_id="i-1",
    idempotency_key="taint 1; rm -rf /",
    controller="127.0.0.1:1",
)


def test_placeholders_are_single_arguments(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    script = f"import json,sys; json.dump(sys.argv[1:], open({str(out)!r}, 'w'));"
    script += "print(json.dumps({{'instance_id': sys.argv[1]}}))"  # braces doubled
    launched = provider(
        [sys.executable, "-c", script, "{instance_id}", "key={idempotency_key}", "{group}"]
    ).launch(SPEC)
    assert launched.instance_id == "i-1"
    assert json.loads(out.read_text()) == ["i-1", "key=taint 1; rm -rf /", "web"]


def test_failure_carries_the_stderr_tail() -> None:
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('quota exceeded'); sys.exit(3)"]
    with pytest.raises(PermanentProviderError, match="exited 3: quota exceeded"):
        provider(failing).launch(SPEC)


def test_exit_75_is_temporary() -> None:
    with pytest.raises(TemporaryProviderError) as caught:
        provider([sys.executable, "-c", "raise SystemExit(75)"], retry_delay=7).launch(SPEC)
    assert caught.value.delay == 7


def test_timeout_is_temporary_and_kills_the_command() -> None:
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(TemporaryProviderError, match="timed out"):
        provider(slow, timeout=0.3).launch(SPEC)


def test_output_must_be_json() -> None:
    with pytest.raises(PermanentProviderError, match="no valid JSON"):
        provider([sys.executable, "-c", "print('launched!')"]).launch(SPEC)
    with pytest.raises(PermanentProviderError, match="string instance_id"):
        provider([sys.executable, "-c", "print('{{}}')"]).launch(SPEC)


def test_templates_are_checked_when_configured() -> None:
    for template in ("{image}", "{}", "{group.name}", "{group!r}"):
        with pytest.raises(PermanentProviderError, match="unknown placeholder"):
            provider(["/bin/true", template])
    with pytest.raises(PermanentProviderError, match="argv"):
        create_provider(
            "exec",
            {"launch": "deploy.sh {group}", "terminate": [], "list": [], "describe": []},
        )
    with pytest.raises(PermanentProviderError, match="cannot run"):
        provider(["/nonexistent/deploy"]).launch(SPEC)


def test_unknown_provider_names_the_built_ins() -> None:
    with pytest.raises(PermanentProviderError, match="local, docker, exec, aws-asg"):
        create_provider("kubernetes", {})
