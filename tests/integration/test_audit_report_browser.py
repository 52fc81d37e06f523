"""The report page in a real headless Chromium: it loads clean, draws, prints, stays inert.

The page made from the scripted history (played through the real controller)
is opened over the DevTools protocol: no console message or exception, no
network request but the page itself, no script element, one chart series per
group, and the hostile reason, actor and path shown as text. Printed with
``--print-to-pdf`` (Letter) and on A4, ``pdftotext`` finds the summary's
numbers, as they are in the JSON report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.audit.report_format import duration, percent
from controller.cli.main import main
from tests.integration.audit_report_support import (
    HOSTILE_ACTOR,
    HOSTILE_PATH_SHOWN,
    HOSTILE_REASON,
    Scripted,
    play_history,
)
from tests.integration.chromium import Browser, chromium_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The HTML page and the JSON report of the scripted history's period."""
    root = tmp_path_factory.mktemp("page")
    scripted: Scripted = play_history(root / "data")
    start, end = scripted.period
    base = ["audit", "report", "--data-dir", str(root / "data"), "--from", str(start)]
    base += ["--to", str(end)]
    assert main([*base, "--out", str(root / "report.html")]) == 0
    assert main([*base, "--out", str(root / "report.json"), "--format", "json"]) == 0
    return root / "report.html", json.loads((root / "report.json").read_text())


def pdf_text(pdf: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext is not installed (run .ci/setup-system: apt install poppler-utils)")
    done = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # one space between words, whatever the layout


def summary_lines(document: dict[str, Any]) -> list[str]:
    """What the summary must read, written from the JSON report's numbers."""
    summary = document["summary"]
    taints = summary["taints"]
    timing = summary["taint_to_replacement_conformant_ms"]
    lines = [
        f"Instances seen in the period {summary['instances_seen']}",
        f"Share conformant (time-weighted) {percent(summary['share_conformant'])}",
        f"Taints {taints['total']} (file {taints['file']}, image {taints['image']},"
        f" manual {taints['manual']})",
        f"Replacements launched {summary['replacements']['launched']}",
        f"median {duration(timing['median'])}, worst {duration(timing['worst'])}",
        f"Breaker openings {summary['breaker_openings']}",
    ]
    lines += [f"{g['group']} {g['instances']}" for g in document["groups"]]
    lines += [percent(g["share_conformant"]) for g in document["groups"]]
    return lines


def expected_breaker_marks(document: dict[str, Any]) -> list[tuple[str, float]]:
    """Where the chart must mark the breaker: mid-slice of each opening, from the JSON."""
    chart = document["chart"]
    step = (744 - 56) / chart["buckets"]  # the plot's left and right edges in the viewBox
    return [
        (
            f"breaker opened in {b['group']} at {b['at']} ({b['tainted']} of {b['size']} tainted)",
            round(56 + (int((b["at_ms"] - chart["from_ms"]) / chart["bucket_ms"]) + 0.5) * step, 2),
        )
        for b in document["breaker"]
        if b["opened"]
    ]


def drawn_breaker_marks(browser: Browser) -> list[tuple[str, float]]:
    """Each breaker mark as laid out: its title and its line's x (the line and diamond drawn)."""
    marks = browser.evaluate(
        "[...document.querySelectorAll('svg.chart g.breakers > g')].map(g => {"
        " const line = g.querySelector('line.breaker').getBBox();"
        " const mark = g.querySelector('polygon.breaker-mark').getBBox();"
        " return [g.querySelector('title').textContent, line.x, line.height, mark.width]; })"
    )
    assert all(height > 100 and width > 0 for _, _, height, width in marks), marks
    return [(title, round(x, 2)) for title, x, _, _ in marks]


def test_the_page_loads_with_no_error_no_request_and_draws_one_series_per_group(
    made: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    page, document = made
    browser = Browser(tmp_path / "profile")
    try:
        url = page.as_uri()
        browser.open(url)
        assert browser.console == [] and browser.exceptions == []
        assert [e for e in browser.log_entries if e.get("level") in ("error", "warning")] == []
        assert browser.requests == [url]
        series = browser.evaluate(
            "[...document.querySelectorAll('svg.chart path.series')]"
            ".map(p => [p.dataset.group, (p.getAttribute('d') || '').length])"
        )
        assert [g for g, _ in series] == [g["group"] for g in document["groups"]] == ["api", "web"]
        assert all(length > 0 for _, length in series)
        breaker_marks = expected_breaker_marks(document)
        assert len(breaker_marks) == 1 and drawn_breaker_marks(browser) == breaker_marks
        assert browser.evaluate(
            "[...document.querySelectorAll('ul.legend li')].map(li => li.innerText.trim())"
        )[-3:] == ["rollout or rollback", "breaker opened", "taints"]
        assert browser.evaluate("document.scripts.length") == 0
        assert browser.evaluate("document.querySelectorAll('img, b, iframe, object').length") == 0
        text = browser.evaluate("document.body.innerText")
        for hostile in (HOSTILE_REASON, HOSTILE_ACTOR, HOSTILE_PATH_SHOWN):
            assert hostile in text
        assert browser.evaluate("document.querySelector('[data-fact=share]').textContent") == (
            percent(document["summary"]["share_conformant"])
        )
        shot = browser.screenshot(tmp_path / "report.png")
        assert shot.stat().st_size > 10_000
        a4 = pdf_text(browser.print_pdf(tmp_path / "a4.pdf", width_in=8.27, height_in=11.69))
    finally:
        browser.close()
    for line in summary_lines(document):
        assert line in a4, line


def test_print_to_pdf_on_letter_holds_the_summary_numbers(
    made: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    page, document = made
    pdf = tmp_path / "report.pdf"
    command = chromium_command(
        tmp_path / "profile", "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and pdf.exists(), done.stderr[-2000:]
    text = pdf_text(pdf)
    for line in summary_lines(document):
        assert line in text, line
    assert re.search(r"Audit chain: INTACT head seq \d+", text)
    assert "<script>alert('reason')</script>" in text  # as text, in print too
    assert "corral audit verify --data-dir" in text
