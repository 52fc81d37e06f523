"""deploy/grafana: the dashboard follows the rules file provisioning needs, and is generated.

No Grafana server can run here, so the shape is checked against what Grafana's
file provisioning and classic JSON model require; test_deploy_live.py proves
every query returns data from a real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

import yaml

from tests.deploy.deploy_support import DEPLOY

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "corral-fleet.json"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "corral_dashboard_generate", GRAFANA / "generate.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_committed_dashboard_is_the_generator_output() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == _generator().render(), (
        "run: python deploy/grafana/generate.py"
    )
    assert _generator().main(["--check"]) == 0


def test_dashboard_identity_and_datasource_variable() -> None:
    dashboard = _dashboard()
    text = DASHBOARD.read_text(encoding="utf-8")
    assert dashboard.get("id") is None
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,40}", dashboard["uid"])
    assert "__inputs" not in dashboard
    assert "DS_PROMETHEUS" not in text
    for key in ("title", "schemaVersion", "time", "refresh", "templating", "panels"):
        assert key in dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    group = variables["group"]
    assert group["type"] == "query"
    assert group["includeAll"] and group["allValue"] == ".*"
    assert group["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_uses_the_datasource_variable_and_unique_ref_ids() -> None:
    dashboard = _dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _query_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].strip()


def test_rate_windows_use_rate_interval() -> None:
    for panel in _query_panels(_dashboard()):
        for target in panel["targets"]:
            for window in re.findall(r"(?:rate|increase)\([^\[]*\[([^\]]+)\]", target["expr"]):
                assert window == "$__rate_interval", f"{panel['title']}: [{window}]"


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_required_views_are_present() -> None:
    exprs = " ".join(t["expr"] for p in _query_panels(_dashboard()) for t in p["targets"])
    kinds = {p["type"] for p in _query_panels(_dashboard())}
    assert "stat" in kinds
    for metric in (
        "corral_group_conformance_ratio",
        "corral_instances",
        "corral_drift_detections_total",
        "corral_taints_total",
        "corral_replacements_total",
        "corral_replacement_duration_seconds_bucket",
        "corral_breaker_open",
        "corral_instance_report_age_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "corral_agent_scan_duration_seconds_bucket",
        "corral_agent_bytes_hashed_total",
        "corral_grpc_requests_total",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    assert 'group=~"$group"' in exprs


def test_datasource_provisioning_shape() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"].startswith("http")
    assert source["uid"] and source["name"]
    assert source["isDefault"] is True


def test_dashboard_provisioning_shape() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "corral.yaml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["folder"]
    assert provider["options"]["path"].startswith("/")
    assert "foldersFromFilesStructure" in provider["options"]
