"""The conformance report as one self-contained HTML page an auditor can file and print.

Rendered by Jinja2 from ``templates/report.html.j2`` with autoescaping on:
every value from the audit log (reasons, actors, paths, group names) is
escaped, and the chart is SVG drawn by the same template from the numbers in
:mod:`controller.audit.report_chart`. The page loads nothing (no scripts,
fonts, images or styles from anywhere; a Content-Security-Policy says so) and
carries a print stylesheet that fits A4 and Letter.
"""

from __future__ import annotations

from functools import cache

import jinja2
import markupsafe

from controller.audit.record import EventKind
from controller.audit.report import REPORT_STATES, Report
from controller.audit.report_chart import chart
from controller.audit.report_format import duration, iso, percent
from controller.audit.report_json import SCHEMA_VERSION
from controller.audit.report_proof import Proof

TEMPLATE = "report.html.j2"
_CHANGE_WORDS = {
    str(EventKind.GROUP_CREATED): "group created",
    str(EventKind.ROLLOUT): "rollout",
    str(EventKind.ROLLBACK): "rollback",
}


def render_html(report: Report, proof: Proof, *, generated_ms: int) -> str:
    """The report page as text (UTF-8 when written)."""
    median, worst, timed = report.taint_to_replacement()
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            proof=proof,
            chart=chart(report),
            kinds=report.taints_by_kind,
            median=median,
            worst=worst,
            timed=timed,
            states=REPORT_STATES,
            bucket_ms=(report.to_ms - report.chart_from_ms) / report.buckets,
            generated_ms=generated_ms,
            schema=SCHEMA_VERSION,
        )
    )


def short_image(ref: str) -> str:
    """``name@sha256:0123456789ab…``: enough to tell images apart in a narrow column."""
    name, at, digest = ref.partition("@")
    if not at:
        return ref
    algorithm, colon, value = digest.partition(":")
    return f"{name}@{algorithm}:{value[:12]}…" if colon and len(value) > 12 else ref


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("controller.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        # Built from numbers alone, so already safe: no escaping pass for these.
        iso=lambda at_ms: markupsafe.Markup(iso(at_ms)),
        duration=lambda ms: markupsafe.Markup(duration(ms)),
        percent=lambda share: markupsafe.Markup(percent(share)),
        short_image=short_image,
        change_kind=lambda kind: _CHANGE_WORDS.get(kind, kind),
    )
    return env
