"""Generate the corral fleet dashboard (Grafana classic JSON model).

The dashboard is written from this script rather than by hand so that every
panel follows the same rules: one datasource variable (file provisioning cannot
resolve `${DS_PROMETHEUS}`), `$__rate_interval` in rate windows, unique refIds,
and a grid that does not overlap. tests/deploy checks that the committed JSON is
exactly what this script prints, and runs every query against a real Prometheus.

    python deploy/grafana/generate.py           # rewrite dashboards/corral-fleet.json
    python deploy/grafana/generate.py --check   # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "corral-fleet.json"
UID = "corral-fleet"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
G = 'group=~"$group"'
AGENT = 'job="corral-agent"'

Panel = dict[str, Any]


def target(expr: str, legend: str = "__auto", **extra: Any) -> dict[str, Any]:
    """One Prometheus query; refIds are assigned when the panel is built."""
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, **extra}


class _Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> dict[str, int]:
        if self.x + width > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        pos = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.x += width
        self.row_height = max(self.row_height, height)
        return pos

    def new_row(self) -> dict[str, int]:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0
        pos = {"h": 1, "w": 24, "x": 0, "y": self.y}
        self.y += 1
        return pos

    def take_id(self) -> int:
        panel_id = self.next_id
        self.next_id += 1
        return panel_id


def _panel(
    layout: _Layout,
    *,
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    width: int = 8,
    height: int = 8,
    options: dict[str, Any] | None = None,
    field_config: dict[str, Any] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(field_config or {})
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": layout.place(width, height),
        "id": layout.take_id(),
        "options": options or {},
        "targets": [{**t, "refId": chr(ord("A") + index)} for index, t in enumerate(targets)],
        "title": title,
        "type": kind,
    }


def _row(layout: _Layout, title: str) -> Panel:
    return {
        "collapsed": False,
        "gridPos": layout.new_row(),
        "id": layout.take_id(),
        "panels": [],
        "title": title,
        "type": "row",
    }


def _thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in steps],
        }
    }


def _quantiles(metric: str, by: str, selector: str = "") -> list[dict[str, Any]]:
    matchers = f"{{{selector}}}" if selector else ""
    window = f"{metric}_bucket{matchers}[$__rate_interval]"
    return [
        target(
            f"histogram_quantile({q}, sum by (le{by}) (rate({window})))",
            f"p{round(q * 100)}" + (" {{" + by.lstrip(", ") + "}}" if by else ""),
        )
        for q in (0.5, 0.9, 0.99)
    ]


def _glance(layout: _Layout) -> list[Panel]:
    stat = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return [
        _row(layout, "Fleet at a glance"),
        _panel(
            layout,
            kind="stat",
            title="Conformance by group",
            description="Share of each group's instances proven identical to its desired image.",
            targets=[
                target(f"min by (group) (corral_group_conformance_ratio{{{G}}})", "{{group}}")
            ],
            unit="percentunit",
            width=8,
            height=5,
            options=stat,
            field_config={"min": 0, "max": 1}
            | _thresholds(("red", None), ("orange", 0.9), ("green", 0.99)),
        ),
        _panel(
            layout,
            kind="stat",
            title="Tainted / silent instances",
            description="Instances tainted for drift, and instances whose agent went silent.",
            targets=[
                target(
                    f'sum(max by (group) (corral_instances{{{G}, state="tainted"}}))', "tainted"
                ),
                target(f'sum(max by (group) (corral_instances{{{G}, state="unknown"}}))', "silent"),
            ],
            width=6,
            height=5,
            options=stat,
            field_config=_thresholds(("green", None), ("orange", 1)),
        ),
        _panel(
            layout,
            kind="stat",
            title="Breakers open",
            description="Groups whose replacement circuit breaker is open (replacing stopped).",
            targets=[target(f"sum(max by (group) (corral_breaker_open{{{G}}}))", "open")],
            width=4,
            height=5,
            options=stat,
            field_config=_thresholds(("green", None), ("red", 1)),
        ),
        _panel(
            layout,
            kind="stat",
            title="Controllers up / images",
            description="Controller scrape targets up, and images registered with manifests.",
            targets=[
                target('sum(up{job="corral-controller"})', "controllers up"),
                target("max(corral_images_registered)", "images"),
            ],
            width=6,
            height=5,
            options=stat,
        ),
    ]


def _drift(layout: _Layout) -> list[Panel]:
    stacked = {"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}}
    return [
        _row(layout, "Drift and taints"),
        _panel(
            layout,
            kind="timeseries",
            title="Instances by state",
            description="pending, conformant, tainted, replacing, retired and unknown (silent).",
            targets=[
                target(
                    f"sum by (state) (max by (group, state) (corral_instances{{{G}}}))",
                    "{{state}}",
                )
            ],
            field_config=stacked,
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Drift detections by kind",
            description="image: wrong or unregistered digest; file: entries changed; manual.",
            targets=[
                target(
                    f"sum by (kind) (rate(corral_drift_detections_total{{{G}}}[$__rate_interval]))",
                    "{{kind}}",
                )
            ],
            unit="ops",
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Taints by source",
            description="Who tainted: agent evidence, an operator, or the controller itself.",
            targets=[
                target(
                    f"sum by (source) (rate(corral_taints_total{{{G}}}[$__rate_interval]))",
                    "{{source}}",
                )
            ],
            unit="ops",
        ),
    ]


def _replacements(layout: _Layout) -> list[Panel]:
    return [
        _row(layout, "Replacements"),
        _panel(
            layout,
            kind="timeseries",
            title="Replacements by result",
            description="Finished replacements per second by result, and those in flight.",
            targets=[
                target(
                    f"sum by (result) (rate(corral_replacements_total{{{G}}}[$__rate_interval]))",
                    "{{result}}",
                ),
                target(
                    f"sum(max by (group) (corral_replacements_in_progress{{{G}}}))",
                    "in progress",
                ),
            ],
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Replacement duration",
            description="From taint to the replacement being conformant (or the old one gone).",
            targets=_quantiles("corral_replacement_duration_seconds", "", G),
            unit="s",
        ),
        _panel(
            layout,
            kind="state-timeline",
            title="Circuit breaker",
            description="1 = open: too much of the group tainted at once, replacing stopped.",
            targets=[target(f"max by (group) (corral_breaker_open{{{G}}})", "{{group}}")],
            field_config={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "closed", "color": "green"},
                            "1": {"text": "open", "color": "red"},
                        },
                    }
                ]
            },
        ),
    ]


def _per_group(layout: _Layout) -> list[Panel]:
    age = f"corral_instance_report_age_seconds_bucket{{{G}}}"
    return [
        _row(layout, "Per group"),
        _panel(
            layout,
            kind="timeseries",
            title="Conformance ratio",
            description="Per group, over time.",
            targets=[
                target(f"min by (group) (corral_group_conformance_ratio{{{G}}})", "{{group}}")
            ],
            unit="percentunit",
            field_config={"min": 0, "max": 1},
        ),
        _panel(
            layout,
            kind="heatmap",
            title="Report age distribution",
            description="How long ago each instance last reported, as the controller sees it.",
            targets=[
                target(f"sum by (le) (max by (group, le) ({age}))", "{{le}}", format="heatmap")
            ],
            options={"calculate": False, "yAxis": {"unit": "s"}},
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Report age p90 by group",
            description="Agents report every interval; a rising age means silent agents.",
            targets=[target(f"histogram_quantile(0.9, max by (group, le) ({age}))", "{{group}}")],
            unit="s",
        ),
    ]


def _agents(layout: _Layout) -> list[Panel]:
    return [
        _row(layout, "Agents"),
        _panel(
            layout,
            kind="timeseries",
            title="Agent memory (RSS)",
            description="Resident memory across all agents: the largest and the average.",
            targets=[
                target(f"max(process_resident_memory_bytes{{{AGENT}}})", "max"),
                target(f"avg(process_resident_memory_bytes{{{AGENT}}})", "avg"),
            ],
            unit="bytes",
            width=6,
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Agent CPU",
            description="CPU seconds per second across all agents.",
            targets=[
                target(f"max(rate(process_cpu_seconds_total{{{AGENT}}}[$__rate_interval]))", "max"),
                target(f"avg(rate(process_cpu_seconds_total{{{AGENT}}}[$__rate_interval]))", "avg"),
            ],
            unit="percentunit",
            width=6,
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Scan duration",
            description="Full scans hash everything; incremental scans reuse the stat cache.",
            targets=_quantiles("corral_agent_scan_duration_seconds", ", mode", AGENT),
            unit="s",
            width=6,
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Bytes and files hashed",
            description="Summed over all agents.",
            targets=[
                target(
                    f"sum(rate(corral_agent_bytes_hashed_total{{{AGENT}}}[$__rate_interval]))",
                    "bytes/s",
                ),
                target(
                    f"sum(rate(corral_agent_files_hashed_total{{{AGENT}}}[$__rate_interval]))",
                    "files/s",
                ),
            ],
            unit="Bps",
            width=6,
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Agent reports by result",
            description="delivered, buffered (controller unreachable), dropped, rejected.",
            targets=[
                target(
                    "sum by (result) "
                    f"(rate(corral_agent_reports_total{{{AGENT}}}[$__rate_interval]))",
                    "{{result}}",
                ),
                target(f"sum(corral_agent_buffered_reports{{{AGENT}}})", "buffered now"),
            ],
            unit="ops",
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Agents seeing drift / scan errors",
            description="Agents whose live root differs from the baseline; unreadable entries.",
            targets=[
                target(f"sum(corral_agent_drift{{{AGENT}}})", "drifted agents"),
                target(
                    f"sum(rate(corral_agent_scan_errors_total{{{AGENT}}}[$__rate_interval]))",
                    "scan errors/s",
                ),
            ],
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Report round trip",
            description="Agent-side duration of a report call, including retries.",
            targets=_quantiles("corral_agent_report_duration_seconds", "", AGENT),
            unit="s",
        ),
    ]


def _controller(layout: _Layout) -> list[Panel]:
    return [
        _row(layout, "Controller"),
        _panel(
            layout,
            kind="timeseries",
            title="RPC errors by code",
            description="gRPC calls that did not end OK, by method and status code.",
            targets=[
                target(
                    "sum by (method, code) "
                    '(rate(corral_grpc_requests_total{code!="OK"}[$__rate_interval]))',
                    "{{method}} {{code}}",
                )
            ],
            unit="ops",
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Reports handled",
            description="Reports by result, and rejected reports by reason.",
            targets=[
                target(
                    "sum by (result) (rate(corral_reports_total[$__rate_interval]))", "{{result}}"
                ),
                target(
                    "sum by (reason) (rate(corral_reports_rejected_total[$__rate_interval]))",
                    "rejected: {{reason}}",
                ),
            ],
            unit="ops",
        ),
        _panel(
            layout,
            kind="timeseries",
            title="Report handling latency",
            description="Controller-side time to check a report against the manifest.",
            targets=_quantiles("corral_report_handling_seconds", ""),
            unit="s",
        ),
    ]


def build_dashboard() -> dict[str, Any]:
    """The whole dashboard as a plain dict, in Grafana's classic JSON model."""
    layout = _Layout()
    panels = (
        _glance(layout)
        + _drift(layout)
        + _replacements(layout)
        + _per_group(layout)
        + _agents(layout)
        + _controller(layout)
    )
    return {
        "annotations": {"list": []},
        "description": "corral: fleet conformance, drift, replacements and agent health.",
        "editable": False,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["corral"],
        "templating": {
            "list": [
                {
                    "current": {},
                    "hide": 0,
                    "label": "Data source",
                    "name": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                    "type": "datasource",
                },
                {
                    "allValue": ".*",
                    "current": {},
                    "datasource": DATASOURCE,
                    "definition": "label_values(corral_instances, group)",
                    "hide": 0,
                    "includeAll": True,
                    "label": "Group",
                    "multi": True,
                    "name": "group",
                    "query": {
                        "qryType": 1,
                        "query": "label_values(corral_instances, group)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "refresh": 2,
                    "sort": 1,
                    "type": "query",
                },
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "corral fleet",
        "uid": UID,
        "version": 1,
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if DASHBOARD_PATH.read_text(encoding="utf-8") != text:
            print(f"{DASHBOARD_PATH} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    DASHBOARD_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
