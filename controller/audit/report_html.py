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
from markupsafe import Markup

from controller.audit.record import EventKind
from controller.audit.report_chart import chart
from controller.audit.report_facts import REPORT_STATES, ImageFacts, Report
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
    template = _environment().get_template(TEMPLATE)
    return template.render(
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
        runs={image.image: _run_rows(image) for image in report.images},
    )


def _run_rows(image: ImageFacts) -> list[tuple[str, str, Markup, Markup | None]]:
    """Each run as (instance, group, since, until): plain tuples, the page's longest table.

    Unpacked by the template without an attribute lookup per cell; the times
    are formatted from numbers, so they are already safe.
    """
    return [
        (
            run.instance_id,
            run.group,
            Markup(iso(run.from_ms)),
            None if run.until_ms is None else Markup(iso(run.until_ms)),
        )
        for run in image.runs
    ]


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
        iso=lambda at_ms: Markup(iso(at_ms)),
        duration=lambda ms: Markup(duration(ms)),
        percent=lambda share: Markup(percent(share)),
        short_image=short_image,
        change_kind=lambda kind: _CHANGE_WORDS.get(kind, kind),
    )
    return env
