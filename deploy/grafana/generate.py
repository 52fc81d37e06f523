"""Generate the corral fleet dashboard with grafana-foundation-sdk's typed builders.

Every panel follows the same rules: one datasource variable (file provisioning
cannot resolve `${DS_PROMETHEUS}`), `$__rate_interval` in rate windows, unique
refIds, and panel widths in each row that add up to 24 (the SDK places panels
left to right and wraps only at 24 columns). tests/deploy checks that the
committed JSON is exactly what this script prints, that this script is
`mypy --strict` clean, and runs every query against a real Prometheus.

    python deploy/grafana/generate.py           # rewrite dashboards/corral-fleet.json
    python deploy/grafana/generate.py --check   # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import dashboard, units
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "corral-fleet.json"
DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid="${datasource}")
G = 'group=~"$group"'
AGENT = 'job="corral-agent"'
NOT_OK = 'code!="OK"'

Query = tuple[str, str]  # a Prometheus expression and its legend
Panels = list[Builder[dashboard.Panel]]


def series(metric: str, selector: str) -> str:
    return f"{metric}{{{selector}}}" if selector else metric


def rate(metric: str, selector: str = G) -> str:
    return f"rate({series(metric, selector)}[$__rate_interval])"


def group_total(metric: str, selector: str = G) -> str:
    """One value per group (every controller exports the same gauges), summed."""
    return f"sum(max by (group) ({series(metric, selector)}))"


def quantiles(metric: str, selector: str, by: str = "") -> list[Query]:
    """p50, p90 and p99 of a histogram, split by one more label if `by` names one."""
    labels, legend = (f"le, {by}", f" {{{{{by}}}}}") if by else ("le", "")
    window = rate(f"{metric}_bucket", selector)
    return [
        (f"histogram_quantile({q}, sum by ({labels}) ({window}))", f"p{round(q * 100)}{legend}")
        for q in (0.5, 0.9, 0.99)
    ]


def query(ref_id: str, expr: str, legend: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .ref_id(ref_id)
        .expr(expr)
        .legend_format(legend)
    )


def targets(*queries: Query) -> list[Builder[Dataquery]]:
    """The queries with refIds A, B, C … in order."""
    return [query(chr(ord("A") + index), *q) for index, q in enumerate(queries)]


def thresholds(*steps: tuple[str, float | None]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(color=color, value=value) for color, value in steps])
    )


def big_number(title: str, description: str, width: int, *queries: Query) -> stat.Panel:
    """A stat panel, 5 high, showing each query's last value."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets(*queries))
        .unit(units.Short)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .span(width)
        .height(5)
    )


def graph(title: str, description: str, unit: str, *queries: Query) -> timeseries.Panel:
    """A time series panel, 8 by 8 unless resized."""
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets(*queries))
        .unit(unit)
        .span(8)
        .height(8)
    )


def glance() -> Panels:
    return [
        big_number(
            "Conformance by group",
            "Share of each group's instances proven identical to its desired image.",
            8,
            (f"min by (group) (corral_group_conformance_ratio{{{G}}})", "{{group}}"),
        )
        .unit(units.PercentUnit)
        .min(0)
        .max(1)
        .thresholds(thresholds(("red", None), ("orange", 0.9), ("green", 0.99))),
        big_number(
            "Tainted / silent instances",
            "Instances tainted for drift, and instances whose agent went silent.",
            6,
            (group_total("corral_instances", f'{G}, state="tainted"'), "tainted"),
            (group_total("corral_instances", f'{G}, state="unknown"'), "silent"),
        ).thresholds(thresholds(("green", None), ("orange", 1))),
        big_number(
            "Breakers open",
            "Groups whose replacement circuit breaker is open (replacing stopped).",
            4,
            (group_total("corral_breaker_open"), "open"),
        ).thresholds(thresholds(("green", None), ("red", 1))),
        big_number(
            "Controllers up / images",
            "Controller scrape targets up, and images registered with manifests.",
            6,
            ('sum(up{job="corral-controller"})', "controllers up"),
            ("max(corral_images_registered)", "images"),
        ),
    ]


def drift() -> Panels:
    return [
        graph(
            "Instances by state",
            "pending, conformant, tainted, replacing, retired and unknown (silent).",
            units.Short,
            (f"sum by (state) (max by (group, state) (corral_instances{{{G}}}))", "{{state}}"),
        )
        .stacking(StackingConfig().mode(StackingMode.NORMAL))
        .fill_opacity(30),
        graph(
            "Drift detections by kind",
            "image: wrong or unregistered digest; file: entries changed; manual.",
            units.OpsPerSecond,
            (f"sum by (kind) ({rate('corral_drift_detections_total')})", "{{kind}}"),
        ),
        graph(
            "Taints by source",
            "Who tainted: agent evidence, an operator, or the controller itself.",
            units.OpsPerSecond,
            (f"sum by (source) ({rate('corral_taints_total')})", "{{source}}"),
        ),
    ]


def replacements() -> Panels:
    breaker_states = {
        "0": dashboard.ValueMappingResult(text="closed", color="green"),
        "1": dashboard.ValueMappingResult(text="open", color="red"),
    }
    return [
        graph(
            "Replacements by result",
            "Finished replacements per second by result, and those in flight.",
            units.Short,
            (f"sum by (result) ({rate('corral_replacements_total')})", "{{result}}"),
            (group_total("corral_replacements_in_progress"), "in progress"),
        ),
        graph(
            "Replacement duration",
            "From taint to the replacement being conformant (or the old one gone).",
            units.Seconds,
            *quantiles("corral_replacement_duration_seconds", G),
        ),
        statetimeline.Panel()
        .title("Circuit breaker")
        .description("1 = open: too much of the group tainted at once, replacing stopped.")
        .datasource(DATASOURCE)
        .targets(targets((f"max by (group) (corral_breaker_open{{{G}}})", "{{group}}")))
        .unit(units.Short)
        .mappings([dashboard.ValueMap(breaker_states)])
        .span(8)
        .height(8),
    ]


def per_group() -> Panels:
    age = f"corral_instance_report_age_seconds_bucket{{{G}}}"
    return [
        graph(
            "Conformance ratio",
            "Per group, over time.",
            units.PercentUnit,
            (f"min by (group) (corral_group_conformance_ratio{{{G}}})", "{{group}}"),
        )
        .min(0)
        .max(1),
        heatmap.Panel()
        .title("Report age distribution")
        .description("How long ago each instance last reported, as the controller sees it.")
        .datasource(DATASOURCE)
        .with_target(
            query("A", f"sum by (le) (max by (group, le) ({age}))", "{{le}}").format(
                PromQueryFormat.HEATMAP
            )
        )
        .unit(units.Short)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(units.Seconds))
        .span(8)
        .height(8),
        graph(
            "Report age p90 by group",
            "Agents report every interval; a rising age means silent agents.",
            units.Seconds,
            (f"histogram_quantile(0.9, max by (group, le) ({age}))", "{{group}}"),
        ),
    ]


def agents() -> Panels:
    rss = f"process_resident_memory_bytes{{{AGENT}}}"
    cpu = rate("process_cpu_seconds_total", AGENT)
    return [
        graph(
            "Agent memory (RSS)",
            "Resident memory across all agents: the largest and the average.",
            units.BytesIEC,
            (f"max({rss})", "max"),
            (f"avg({rss})", "avg"),
        ).span(6),
        graph(
            "Agent CPU",
            "CPU seconds per second across all agents.",
            units.PercentUnit,
            (f"max({cpu})", "max"),
            (f"avg({cpu})", "avg"),
        ).span(6),
        graph(
            "Scan duration",
            "Full scans hash everything; incremental scans reuse the stat cache.",
            units.Seconds,
            *quantiles("corral_agent_scan_duration_seconds", AGENT, by="mode"),
        ).span(6),
        graph(
            "Bytes and files hashed",
            "Summed over all agents.",
            units.BytesPerSecondSI,
            (f"sum({rate('corral_agent_bytes_hashed_total', AGENT)})", "bytes/s"),
            (f"sum({rate('corral_agent_files_hashed_total', AGENT)})", "files/s"),
        ).span(6),
        graph(
            "Agent reports by result",
            "delivered, buffered (controller unreachable), dropped, rejected.",
            units.OpsPerSecond,
            (f"sum by (result) ({rate('corral_agent_reports_total', AGENT)})", "{{result}}"),
            (f"sum(corral_agent_buffered_reports{{{AGENT}}})", "buffered now"),
        ),
        graph(
            "Agents seeing drift / scan errors",
            "Agents whose live root differs from the baseline; unreadable entries.",
            units.Short,
            (f"sum(corral_agent_drift{{{AGENT}}})", "drifted agents"),
            (f"sum({rate('corral_agent_scan_errors_total', AGENT)})", "scan errors/s"),
        ),
        graph(
            "Report round trip",
            "Agent-side duration of a report call, including retries.",
            units.Seconds,
            *quantiles("corral_agent_report_duration_seconds", AGENT),
        ),
    ]


def controller() -> Panels:
    return [
        graph(
            "RPC errors by code",
            "gRPC calls that did not end OK, by method and status code.",
            units.OpsPerSecond,
            (
                f"sum by (method, code) ({rate('corral_grpc_requests_total', NOT_OK)})",
                "{{method}} {{code}}",
            ),
        ),
        graph(
            "Reports handled",
            "Reports by result, and rejected reports by reason.",
            units.OpsPerSecond,
            (f"sum by (result) ({rate('corral_reports_total', '')})", "{{result}}"),
            (
                f"sum by (reason) ({rate('corral_reports_rejected_total', '')})",
                "rejected: {{reason}}",
            ),
        ),
        graph(
            "Report handling latency",
            "Controller-side time to check a report against the manifest.",
            units.Seconds,
            *quantiles("corral_report_handling_seconds", ""),
        ),
    ]


ROWS = {
    "Fleet at a glance": glance,
    "Drift and taints": drift,
    "Replacements": replacements,
    "Per group": per_group,
    "Agents": agents,
    "Controller": controller,
}


def build() -> dashboard.Dashboard:
    """The whole dashboard; panels are numbered top to bottom."""
    board = (
        Dashboard("corral fleet")
        .uid("corral-fleet")
        .description("corral: fleet conformance, drift, replacements and agent health.")
        .tags(["corral"])
        .readonly()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("")
        .version(1)
        .annotations([])
        .links([])
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            QueryVariable("group")
            .label("Group")
            .datasource(DATASOURCE)
            .query(
                {
                    "qryType": 1,
                    "query": "label_values(corral_instances, group)",
                    "refId": "PrometheusVariableQueryEditor-VariableQuery",
                }
            )
            .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for title, panels in ROWS.items():
        board.with_row(Row(title))
        for panel in panels():
            board.with_panel(panel)
    model = board.build()
    for number, panel_model in enumerate(model.panels or [], start=1):
        panel_model.id_val = number
    return model


def render() -> str:
    return JSONEncoder(indent=2, sort_keys=True).encode(build()) + "\n"


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
