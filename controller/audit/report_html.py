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
from markupsafe import Markup, escape

from controller.audit.record import EventKind
from controller.audit.report_chart import chart
from controller.audit.report_facts import REPORT_STATES, ImageFacts, Report, TaintFact
from controller.audit.report_format import duration, iso, percent
from controller.audit.report_json import SCHEMA_VERSION
from controller.audit.report_proof import Proof

TEMPLATE = "report.html.j2"
_STILL = "still running at the end"
_UNCHECKED = "not checked against the root"
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
        taint_rows=_taint_rows(report),
    )


def _run_rows(image: ImageFacts) -> Markup:
    """The rows of the image's runs table (see :func:`_taint_rows`: the same reason)."""
    return Markup(
        "".join(
            [
                f'<tr><td class="mono">{escape(run.instance_id)}</td>'
                f'<td class="mono">{escape(run.group)}</td>'
                f'<td class="nowrap">{iso(run.from_ms)}</td>\n<td class="nowrap">'
                f"{_STILL if run.until_ms is None else iso(run.until_ms)}</td></tr>\n"
                for run in image.runs
            ]
        )
    )


def _taint_rows(report: Report) -> Markup:
    """The rows of the taint table, written here rather than by the template.

    This table and the runs tables are the page's long ones (a row per taint,
    a row per run: hundreds of thousands on a large fleet), where the template
    spends more per cell than the cell costs. Every value from the log is
    escaped as autoescaping does (``markupsafe.escape``); times, counts and
    durations are formatted from numbers.
    """
    return Markup("".join([_taint_row(taint) for taint in report.taints]))


def _taint_row(taint: TaintFact) -> str:
    at = iso(taint.at_ms)
    reason = f"<div>{escape(taint.reason)}</div>" if taint.reason else ""
    evidence = taint.evidence
    if evidence is not None:
        checked = "consistent with the reported root" if evidence.verified else _UNCHECKED
        found = (
            f"<div>{evidence.added} added, {evidence.removed} removed,"
            f" {evidence.modified} modified; {checked}</div>\n"
        )
        if evidence.paths:
            paths = "".join([f'<li class="mono">{escape(path)}</li>' for path in evidence.paths])
            more = '<div class="muted">(more paths not recorded)</div>'
            found += f"<ul>{paths}</ul>{more if evidence.paths_truncated else ''}"
    else:
        found = "" if taint.kind == "manual" else '<div class="muted">no evidence recorded</div>'
    new = taint.replacement
    if new is None:
        replacement = '<span class="muted">none within the period</span>'
    else:
        after = taint.to_replacement_ms
        done = (
            "not conformant by the end" if after is None else f"conformant after {duration(after)}"
        )
        replacement = (
            f'<span class="mono">{escape(new.instance_id)}</span><br>'
            f"launched {iso(new.launched_ms)}<br>\n{done}"
        )
    return (
        f'<tr data-seq="{taint.seq}"><td>{at[:10]}<br>{at[11:]}<br>'
        f'<span class="muted">#{taint.seq}</span></td>\n'
        f'<td class="mono">{escape(taint.instance_id)}<br>'
        f'<span class="muted">{escape(taint.group)}</span></td>\n'
        f'<td class="mono">{escape(short_image(taint.image))}</td>\n'
        f"<td>{escape(taint.kind)}</td>\n"
        f'<td class="mono">{escape(taint.actor)}<br>'
        f'<span class="muted">({escape(taint.source)})</span></td>\n'
        f'<td class="evidence">{reason}{found}</td>\n'
        f"<td>{replacement}</td></tr>\n"
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
        iso=lambda at_ms: Markup(iso(at_ms)),
        duration=lambda ms: Markup(duration(ms)),
        percent=lambda share: Markup(percent(share)),
        short_image=short_image,
        change_kind=lambda kind: _CHANGE_WORDS.get(kind, kind),
    )
    return env
