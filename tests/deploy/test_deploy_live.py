"""Every dashboard query returns data from a real Prometheus scraping a real fleet.

A Grafana server cannot run here, so this is the dashboard's proof: a small
fleet (one controller, three agents on copies of one baked root, one of them
drifted) is scraped by the Debian `prometheus` with the committed scrape config
and rules (only targets and intervals changed), and each panel query, with
Grafana's variables substituted, must parse and, unless it depends on an event
this fleet never produces, return series.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.deploy.deploy_support import DEPLOY, require_tool

pytestmark = pytest.mark.prometheus

BIN = Path(sys.executable).parent
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "corral-fleet.json"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "corral.rules.yml"
GROUP = "live"
AGENTS = 3
DEADLINE = 40.0
T = TypeVar("T")

# Queries over events this fleet does not produce may return nothing; they must
# still parse. Everything else must return at least one series.
MAY_BE_EMPTY = {
    "corral_replacements_total": "the group is in observe mode: nothing is replaced",
    "corral_replacement_duration_seconds_bucket": "the group is in observe mode",
    "corral_reports_rejected_total": "every report this fleet sends is valid",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _program(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in the venv (pip install -e .)")
    return str(path)


@dataclass
class _Processes:
    """Processes this test started, stopped by PID at teardown."""

    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """By the name each was started under (its log is ``<name>.log``)."""

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.running[name] = process
        return process

    def stop_all(self) -> None:
        for process in reversed(self.running.values()):
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def tail(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
            for log in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[_Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    started = _Processes(logs)
    yield started
    started.stop_all()


def _cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_program("corral"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _http_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 400 bad_data carries a JSON body too
        body = error.read()
    result: dict[str, Any] = json.loads(body)
    return result


def _wait(
    condition: Callable[[], T | None], what: str, processes: _Processes, timeout: float = DEADLINE
) -> T:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for name, process in processes.running.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode})\n{processes.tail()}")
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}\n{processes.tail()}")


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace("$group", ".*")
                .replace("${datasource}", ".*")
                .replace("$datasource", ".*")
            )
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


def _prometheus_config(tmp_path: Path, controller: str, agents: list[str]) -> Path:
    """The committed config, with this fleet's targets and a 1 s interval."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    targets = {"corral-controller": [controller], "corral-agent": agents}
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _start_fleet(
    tmp_path: Path, processes: _Processes, env: dict[str, str]
) -> tuple[str, list[str]]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("listen = 8080\n")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "app").write_bytes(b"\x7fELF stand-in")
    image = tmp_path / "image"
    baked = _cli(["bake", str(root), "--out", str(image), "--name", GROUP, "--version", "1"], env)
    assert baked.returncode == 0, baked.stderr
    image_ref = json.loads((image / "image.json").read_text())["image_ref"]

    grpc_port, metrics_port = _free_port(), _free_port()
    env["CORRAL_CONTROLLER"] = f"127.0.0.1:{grpc_port}"
    processes.start(
        "controller",
        [
            _program("corral-controller"),
            "serve",
            f"--listen=127.0.0.1:{grpc_port}",
            f"--metrics-listen=127.0.0.1:{metrics_port}",
            f"--data-dir={tmp_path / 'controller'}",
        ],
        env,
    )
    _wait(lambda: _reachable(grpc_port), "the controller's gRPC port", processes)
    for argv in (
        ["image", "register", str(image)],
        ["group", "create", GROUP, "--image", image_ref, "--mode", "observe"],
    ):
        done = _cli(argv, env)
        assert done.returncode == 0, f"corral {' '.join(argv)}: {done.stderr}"

    agent_targets = []
    for number in range(AGENTS):
        agent_root = tmp_path / f"instance-{number}"
        shutil.copytree(root, agent_root, symlinks=True)
        port = _free_port()
        agent_targets.append(f"127.0.0.1:{port}")
        processes.start(
            f"agent-{number}",
            [
                _program("corral-agent"),
                "run",
                f"--controller=127.0.0.1:{grpc_port}",
                f"--root={agent_root}",
                f"--instance-id=i-{number}",
                f"--image-json={image / 'image.json'}",
                f"--group={GROUP}",
                "--interval=1",
                f"--metrics-listen=127.0.0.1:{port}",
                f"--data-dir={tmp_path / f'state-{number}'}",
            ],
            env,
        )
    # One instance drifts: the controller must see it, taint it, and count it.
    (tmp_path / "instance-0" / "etc" / "app.conf").write_text("listen = 9999\n")
    return f"127.0.0.1:{metrics_port}", agent_targets


def test_every_dashboard_query_returns_data(tmp_path: Path, processes: _Processes) -> None:
    prometheus = require_tool("prometheus")
    env = {**os.environ, "PROMETHEUS_DISABLE_CREATED_SERIES": "True"}
    controller, agents = _start_fleet(tmp_path, processes, env)
    # An operator asking for an instance that does not exist: a non-OK RPC code.
    assert _cli(["fleet", "show", "no-such-instance"], env).returncode != 0

    port = _free_port()
    processes.start(
        "prometheus",
        [
            prometheus,
            f"--config.file={_prometheus_config(tmp_path, controller, agents)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        env,
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> dict[str, Any]:
        return _http_json(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))

    def all_up() -> bool:
        try:
            result = query("up")["data"]["result"]
        except (OSError, KeyError, ValueError):
            return False
        return len(result) == 1 + AGENTS and all(r["value"][1] == "1" for r in result)

    _wait(all_up, "every target up == 1", processes)

    queries = _dashboard_queries()
    required = [
        (title, expr) for title, expr in queries if not any(m in expr for m in MAY_BE_EMPTY)
    ]

    def empty_required() -> list[str]:
        return [title for title, expr in required if not query(expr).get("data", {}).get("result")]

    end = time.monotonic() + DEADLINE
    missing = empty_required()
    while missing and time.monotonic() < end:
        time.sleep(0.5)
        missing = empty_required()

    for title, expr in queries:
        answer = query(expr)
        assert answer["status"] == "success", f"{title}: {expr}: {answer.get('error')}"
    assert not missing, f"panels without data: {missing}\n{processes.tail()}"

    groups = _http_json(f"{api}/label/group/values?match[]=corral_instances")
    assert GROUP in groups["data"], "the $group variable's query finds the group"
    drifted = query(f'corral:instances:max{{group="{GROUP}",state="tainted"}}')
    assert drifted["data"]["result"][0]["value"][1] == "1", "the drifted instance is tainted"

    rules = _http_json(f"{api}/rules")["data"]["groups"]
    unhealthy = [
        (rule.get("name"), rule.get("lastError"))
        for group in rules
        for rule in group["rules"]
        if rule.get("health") == "err"
    ]
    assert not unhealthy, unhealthy


def test_bad_promql_is_refused(tmp_path: Path, processes: _Processes) -> None:
    """The query check can fail: Prometheus answers bad_data to an unsubstituted variable."""
    prometheus = require_tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s}\n", encoding="utf-8")
    port = _free_port()
    processes.start(
        "prometheus",
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
    )
    _wait(lambda: _reachable(port), "prometheus", processes, timeout=15)
    expr = "rate(corral_taints_total[$__rate_interval])"
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = _wait(lambda: _safe_json(url), "a query answer", processes, timeout=15)
    assert answer["status"] == "error"
    assert answer["errorType"] == "bad_data"


def _safe_json(url: str) -> dict[str, Any] | None:
    try:
        return _http_json(url)
    except (OSError, ValueError):
        return None
