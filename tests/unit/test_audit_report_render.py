"""The report page and its JSON: every value escaped, nothing loaded, one series per group."""

from __future__ import annotations

import html.parser
import json
import shlex

from controller.audit import events as ev
from controller.audit.chain import Checkpoint, VerifyResult
from controller.audit.memory import MemoryAuditLog
from controller.audit.report import build_report
from controller.audit.report_chart import chart
from controller.audit.report_facts import Report
from controller.audit.report_format import duration, percent
from controller.audit.report_html import render_html, short_image
from controller.audit.report_json import SCHEMA_VERSION, report_json
from controller.audit.report_proof import ChainCheck, Proof, verify_command

V1 = "web@sha256:" + "1" * 64
HOSTILE = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)>"
S = 1000


def hostile_report() -> Report:
    log = MemoryAuditLog()
    log.append(ev.group_created("web", at_ms=0, actor="operator:a", image=V1, mode="enforce"))
    log.append(ev.group_created(HOSTILE, at_ms=0, actor="operator:a", image=V1, mode="enforce"))
    for name, group in (("i-1", "web"), ("i-2", HOSTILE)):
        log.append(
            ev.instance_transition(
                name,
                at_ms=0,
                actor="controller",
                group=group,
                image=V1,
                from_state=None,
                to_state="conformant",
            )
        )
    log.append(
        ev.drift_evidence(
            "i-1",
            at_ms=10 * S,
            actor="agent:i-1",
            group="web",
            image=V1,
            kind="file",
            added=1,
            first_paths=[f"/etc/{HOSTILE}"],
        )
    )
    log.append(
        ev.taint(
            "i-1",
            at_ms=10 * S,
            actor="agent:i-1",
            group="web",
            image=V1,
            source="agent",
            drift_kind="file",
            reason="files differ",
        )
    )
    log.append(
        ev.taint(
            "i-2",
            at_ms=20 * S,
            actor=f"operator:{HOSTILE}",
            group=HOSTILE,
            image=V1,
            source="operator",
            drift_kind="manual",
            reason=HOSTILE,
        )
    )
    log.append(
        ev.breaker_open(
            HOSTILE, at_ms=30 * S, actor=f"controller:{HOSTILE}", tainted=1, size=1, reason=HOSTILE
        )
    )
    log.append(ev.breaker_resume(HOSTILE, at_ms=40 * S, actor="operator:a"))
    return build_report(log.rows(), from_ms=0, to_ms=60 * S)


def proof(ok: bool = True) -> Proof:
    result = VerifyResult(True, 4, 1, 4, "a" * 64)
    if not ok:
        result = result.failed_at(3, f"edited {HOSTILE}")
    return Proof(
        source=f"the data dir /tmp/{HOSTILE}",
        checks=(ChainCheck("the audit log", result),),
        checkpoints=(Checkpoint(2, "b" * 64, 5, key_id="0123456789abcdef", signature="c" * 64),),
        key_id=None,
        export_path=None,
        export_sha256=None,
        command=verify_command(data_dir=f"/tmp/{HOSTILE}", keyed=True),
    )


class _Elements(html.parser.HTMLParser):
    """Every start tag and its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def test_hostile_values_are_text_never_markup() -> None:
    page = render_html(hostile_report(), proof(), generated_ms=0)
    elements = parse(page)
    tags = {tag for tag, _ in elements.tags}
    assert "script" not in tags and "img" not in tags
    assert not any(name.startswith("on") for _, attrs in elements.tags for name in attrs)
    text = "".join(elements.text)
    assert HOSTILE in text  # the reason, the actor, the path and the group, as written
    assert f"/etc/{HOSTILE}" in text
    assert "<script" not in page


def test_the_page_loads_nothing_and_forbids_loading() -> None:
    elements = parse(render_html(hostile_report(), proof(), generated_ms=0))
    for tag, attrs in elements.tags:
        for name in ("src", "href", "srcset", "action", "xlink:href"):
            assert name not in attrs, (tag, attrs)
    (policy,) = [
        a["content"] for t, a in elements.tags if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert policy is not None and "default-src 'none'" in policy and "script-src" not in policy
    assert [t for t, _ in elements.tags].count("style") == 1


def test_the_chart_draws_one_series_per_group_with_escaped_names() -> None:
    report = hostile_report()
    elements = parse(render_html(report, proof(), generated_ms=0))
    series = [a for t, a in elements.tags if t == "path" and a.get("class") == "series"]
    assert sorted(a["data-group"] or "" for a in series) == sorted(g.group for g in report.groups)
    assert all((a.get("d") or "").startswith("M") for a in series)
    assert sum(m.count for m in chart(report).taints) == 2  # both taints are marked


def test_the_chart_marks_where_the_breaker_opened_with_an_escaped_title_and_a_legend() -> None:
    report = hostile_report()
    (mark,) = chart(report).breakers  # the opening at 30 s; the resume is not marked
    assert mark.count == 1 and mark.x == 56 + 120.5 * (744 - 56) / 240  # mid-slice 120 of 240
    assert mark.title.startswith(f"breaker opened in {HOSTILE} at 1970-01-01T00:00:30.000Z")
    assert mark.title.endswith("(1 of 1 tainted)")
    elements = parse(render_html(report, proof(), generated_ms=0))
    lines = [a for t, a in elements.tags if t == "line" and a.get("class") == "breaker"]
    assert [(a["x1"], a["x2"]) for a in lines] == [(str(mark.x), str(mark.x))]
    assert [t for t, a in elements.tags if a.get("class") == "breaker-mark"] == ["polygon"]
    legend = [a for t, a in elements.tags if t == "li" and a.get("data-legend") == "breakers"]
    assert len(legend) == 1
    text = "".join(elements.text)
    assert mark.title in text and "breaker opened" in text  # the title and the legend, as text


def test_breaker_marks_name_at_most_five_openings_per_slice() -> None:
    log = MemoryAuditLog()
    log.append(ev.group_created("web", at_ms=0, actor="operator:a", image=V1, mode="enforce"))
    for n in range(7):
        log.append(
            ev.breaker_open(
                f"g{n}", at_ms=10 * S + n, actor="controller", tainted=2, size=3, reason="r"
            )
        )
    outside = build_report(log.rows(), from_ms=20 * S, to_ms=60 * S)
    assert chart(outside).breakers == ()  # before the period: nothing to mark
    (mark,) = chart(build_report(log.rows(), from_ms=0, to_ms=60 * S)).breakers
    assert mark.count == 7 and mark.title.count("breaker opened") == 5
    assert mark.title.endswith(" …")


def test_the_proof_names_the_command_the_key_and_a_break() -> None:
    text = "".join(parse(render_html(hostile_report(), proof(ok=False), generated_ms=0)).text)
    assert "BROKEN" in text and "0123456789abcdef" in text
    command = shlex.join(["corral", "audit", "verify", "--data-dir", f"/tmp/{HOSTILE}"])
    assert f"{command} --key-file KEY" in text


def test_json_has_the_same_facts_and_a_stable_schema() -> None:
    report = hostile_report()
    document = json.loads(json.dumps(report_json(report, proof(), generated_ms=5)))
    assert document["corral_audit_report"] == SCHEMA_VERSION
    assert set(document) == {
        "corral_audit_report",
        "generated_ms",
        "generated",
        "period",
        "instances",
        "summary",
        "chart",
        "groups",
        "images",
        "changes",
        "breaker",
        "taints",
        "replacements",
        "coverage",
        "proof",
    }
    summary = document["summary"]
    assert summary["instances_seen"] == 2 and summary["taints"] == {
        "total": 2,
        "file": 1,
        "image": 0,
        "manual": 1,
    }
    assert summary["manual_taints"][0]["reason"] == HOSTILE
    assert summary["share_conformant"] == report.share
    assert summary["conformant_ms"] + summary["state_ms"]["tainted"] == summary["existing_ms"]
    assert summary["conformant_ms"] == 2 * 60 * S  # taint records alone do not move states
    assert document["proof"]["signing_key_ids"] == ["0123456789abcdef"]
    assert document["taints"][0]["evidence"]["paths"] == [f"/etc/{HOSTILE}"]
    assert document["taints"][1]["evidence"] is None
    assert len(document["groups"][0]["chart"]) == document["chart"]["buckets"]


def test_formats() -> None:
    assert [duration(v) for v in (None, 0, 999, 12_340, 245_000, 7_380_000, 200_000_000)] == [
        "-",
        "0 ms",
        "999 ms",
        "12.3 s",
        "4 min 05 s",
        "2 h 03 min",
        "2 d 07 h",
    ]
    assert (percent(None), percent(0.61069)) == ("n/a", "61.07 %")
    assert short_image(V1) == "web@sha256:111111111111…" and short_image("ami-123") == "ami-123"
