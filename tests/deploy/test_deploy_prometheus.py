"""deploy/prometheus: the scrape config, the rules and their unit tests, checked by promtool."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import DEPLOY, DOCS, run

pytestmark = pytest.mark.prometheus

PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "corral.rules.yml"
ALERTS = {
    "CorralAgentsSilent",
    "CorralInstancesTaintedNotReplaced",
    "CorralReplacementsFailing",
    "CorralBreakerOpen",
    "CorralConformanceLow",
    "CorralControllerDown",
    "CorralBackgroundLoopDown",
    "CorralAgentUnwatchedDirectories",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_scrape_config_passes_promtool(tool: Callable[[str], str]) -> None:
    result = run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    # The config must load the rules file, not just be valid on its own.
    assert "1 rule files found" in result.stdout + result.stderr


def test_scrape_config_has_both_jobs() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"corral-controller", "corral-agent"}
    assert jobs["corral-controller"]["static_configs"][0]["targets"][0].endswith(":9470")
    assert all(t.endswith(":9471") for t in jobs["corral-agent"]["static_configs"][0]["targets"])
    assert "kubernetes_sd_configs" in (PROM / "prometheus.yml").read_text(encoding="utf-8")


def test_rules_pass_promtool_check(tool: Callable[[str], str]) -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(tool: Callable[[str], str]) -> None:
    test_file = PROM / "tests" / "corral.rules.test.yml"
    result = run([tool("promtool"), "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_catch_a_broken_threshold(
    tool: Callable[[str], str], tmp_path: Path
) -> None:
    """The unit tests can fail: loosen one alert and they must notice."""
    broken = RULES.read_text(encoding="utf-8").replace(
        "corral_group_conformance_ratio) < 0.9", "corral_group_conformance_ratio) < 0.4"
    )
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "corral.rules.yml").write_text(broken, encoding="utf-8")
    (tmp_path / "tests").mkdir()
    test_file = tmp_path / "tests" / "corral.rules.test.yml"
    test_file.write_text((PROM / "tests" / "corral.rules.test.yml").read_text(), encoding="utf-8")
    result = run([tool("promtool"), "test", "rules", str(test_file)])
    assert result.returncode != 0
    assert "CorralConformanceLow" in result.stdout + result.stderr


def test_every_required_alert_exists_and_is_unit_tested() -> None:
    alerts = {str(rule["alert"]) for rule in _rules() if "alert" in rule}
    assert alerts == ALERTS
    tests = yaml.safe_load((PROM / "tests" / "corral.rules.test.yml").read_text())
    tested = [
        (case["alertname"], bool(case["exp_alerts"]))
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in ALERTS:
        assert (alert, True) in tested, f"{alert} has no case where it fires"
        assert (alert, False) in tested, f"{alert} has no case where it stays silent"


def test_every_recording_rule_is_named_and_tested() -> None:
    records = {str(rule["record"]) for rule in _rules() if "record" in rule}
    assert records
    for name in records:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name
    tests = yaml.safe_load((PROM / "tests" / "corral.rules.test.yml").read_text())
    tested = {case["expr"] for test in tests["tests"] for case in test.get("promql_expr_test", [])}
    assert records <= tested, f"untested recording rules: {sorted(records - tested)}"


def _anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors: lower-case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_has_annotations_and_a_runbook_section() -> None:
    anchors = _anchors((DOCS / "operations.md").read_text(encoding="utf-8"))
    for rule in _rules():
        if "alert" not in rule:
            continue
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        page, _, anchor = str(annotations["runbook_url"]).partition("#")
        assert page == "docs/operations.md"
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in operations.md"
        assert rule["labels"]["severity"] in {"warning", "critical"}
