"""The report's numbers against ``corral audit conformance``/``history``/``images``, on a
history played through the real controller, offline and from a live controller.

The time-weighted share is checked by integrating the answers of
``conformance --at T`` between every pair of consecutive record times; taint
counts, detectors and taint-to-replacement times against each instance's
``history``; rollouts and rollbacks against ``images``. The remote report is
made from an export written beside it, which verifies offline and gives the
same facts as the data dir.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.clock import FakeClock
from tests.fixtures.running import RunningController
from tests.integration.audit_report_support import (
    HOSTILE_ACTOR,
    HOSTILE_PATH_SHOWN,
    HOSTILE_REASON,
    Scripted,
    corral,
    corral_json,
    play_history,
)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Scripted:
    return play_history(tmp_path_factory.mktemp("report") / "data")


def report_json(capsys: pytest.CaptureFixture[str], scripted: Scripted, *source: str) -> Any:
    start, end = scripted.period
    return corral_json(
        capsys,
        "audit",
        "report",
        *source,
        "--from",
        str(start),
        "--to",
        str(end),
        "--out",
        "-",
        "--format",
        "json",
    )


def facts(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("proof", "generated", "generated_ms")}


def record_times(capsys: pytest.CaptureFixture[str], scripted: Scripted, tmp: Path) -> list[int]:
    """Every record time in the log, from an export (the moments states can change)."""
    export = tmp / "all.jsonl"
    code, _, err = corral(
        capsys,
        "audit",
        "export",
        "--data-dir",
        str(scripted.data_dir),
        "--since",
        "0",
        "--until",
        "now",
        "--out",
        str(export),
    )
    assert code == 0, err
    lines = [json.loads(line) for line in export.read_text().splitlines()[1:-1]]
    return sorted({line["at_ms"] for line in lines})


def test_time_weighted_share_is_the_integral_of_conformance_at_each_moment(
    scripted: Scripted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ("--data-dir", str(scripted.data_dir))
    document = report_json(capsys, scripted, *source)
    start, end = scripted.period
    moments = [start] + [t for t in record_times(capsys, scripted, tmp_path) if start < t < end]
    spans = list(zip(moments, [*moments[1:], end], strict=True))
    seen: set[str] = set()
    for group in document["groups"]:
        conformant = existing = 0
        for begin, until in spans:
            at = corral_json(
                capsys,
                "audit",
                "conformance",
                *source,
                "--at",
                str(begin),
                "--group",
                group["group"],
                "--json",
            )
            conformant += at["conformant"] * (until - begin)
            existing += at["total"] * (until - begin)
            seen |= {i["instance_id"] for i in at["instances"]}
        assert (group["conformant_ms"], group["existing_ms"]) == (conformant, existing)
        assert group["share_conformant"] == conformant / existing
    at_end = corral_json(capsys, "audit", "conformance", *source, "--at", str(end), "--json")
    seen |= {i["instance_id"] for i in at_end["instances"]}
    assert sorted(seen) == document["instances"]
    assert document["summary"]["instances_seen"] == len(seen) == 5
    total = document["summary"]
    assert total["share_conformant"] == total["conformant_ms"] / total["existing_ms"]
    assert total["conformant_ms"] == sum(g["conformant_ms"] for g in document["groups"])


def test_taints_and_replacements_match_each_instances_history(
    scripted: Scripted, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ("--data-dir", str(scripted.data_dir))
    document = report_json(capsys, scripted, *source)
    start, end = scripted.period
    expected = []
    for instance in document["instances"]:
        history = corral_json(capsys, "audit", "history", instance, *source, "--json")
        for record in history["records"]:
            if record["kind"] == "instance.taint" and start <= record["at_ms"] <= end:
                expected.append(
                    (
                        record["seq"],
                        instance,
                        record["data"]["drift"],
                        record["actor"],
                        record["reason"],
                        record["data"]["source"],
                    )
                )
    assert [
        (t["seq"], t["instance_id"], t["kind"], t["actor"], t["reason"], t["source"])
        for t in document["taints"]
    ] == sorted(expected)
    summary = document["summary"]
    assert summary["taints"] == {"total": 3, "file": 1, "image": 1, "manual": 1}
    assert [(m["actor"], m["reason"]) for m in summary["manual_taints"]] == [
        (f"operator:{HOSTILE_ACTOR}", HOSTILE_REASON)
    ]
    file_taint = next(t for t in document["taints"] if t["kind"] == "file")
    assert file_taint["evidence"]["paths"] == [HOSTILE_PATH_SHOWN]
    # The replacement, from the new instance's own history.
    new = file_taint["replacement"]["instance_id"]
    assert new == scripted.replacement
    history = corral_json(capsys, "audit", "history", new, *source, "--json")
    launch, *rest = [r for r in history["records"] if r["kind"] == "instance.state"]
    assert launch["related"] == "w-1" and launch["data"]["from"] is None
    conformant = next(r["at_ms"] for r in rest if r["data"]["to"] == "conformant")
    assert file_taint["to_replacement_conformant_ms"] == conformant - file_taint["at_ms"]
    took = conformant - file_taint["at_ms"]
    timing = summary["taint_to_replacement_conformant_ms"]
    assert timing == {"median": took, "worst": took, "count": 1, "not_replaced": 2}
    assert summary["replacements"] == {"launched": 1, "conformant": 1}
    assert summary["breaker_openings"] == 1
    assert document["breaker"][0]["at_ms"] == scripted.moments["breaker"]
    assert (document["breaker"][0]["tainted"], document["breaker"][0]["size"]) == (1, 2)


def test_rollouts_rollbacks_and_runs_match_the_images_answer(
    scripted: Scripted, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ("--data-dir", str(scripted.data_dir))
    document = report_json(capsys, scripted, *source)
    start, end = scripted.period
    images = corral_json(capsys, "audit", "images", *source, "--json")["images"]
    spans = sorted(
        (d["from_ms"], d["how"], d["group"], i["image"])
        for i in images
        for d in i["desired"]
        if start <= d["from_ms"] <= end
    )
    assert [
        (c["at_ms"], c["kind"], c["group"], c["to_image"]) for c in document["changes"]
    ] == spans
    assert [c["kind"] for c in document["changes"]] == ["group.rollout", "group.rollback"]
    by_image = {i["image"]: i for i in images}
    for image in document["images"]:
        runs = {
            (r["instance_id"], r["from_ms"], r["until_ms"])
            for r in by_image[image["image"]]["runs"]
            if r["from_ms"] <= end and (r["until_ms"] is None or r["until_ms"] > start)
        }
        reported = {(r["instance_id"], r["from_ms"], r["until_ms"]) for r in image["runs"]}
        # The images answer knows the future; the report ends at the period's end.
        assert {(i, f) for i, f, _ in reported} == {(i, f) for i, f, _ in runs}
        assert image["digest"] == by_image[image["image"]]["digest"]


@pytest.fixture
def controller(scripted: Scripted) -> Iterator[RunningController]:
    running = RunningController(scripted.data_dir, FakeClock(scripted.moments["to"] / 1000 + 500))
    running.start()
    yield running
    running.close()


def test_from_a_live_controller_the_report_is_made_from_an_export_beside_it(
    scripted: Scripted,
    controller: RunningController,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    offline = report_json(capsys, scripted, "--data-dir", str(scripted.data_dir))
    start, end = scripted.period
    page = tmp_path / "q3.html"
    code, out, err = corral(
        capsys,
        "audit",
        "report",
        "--controller",
        controller.address,
        "--from",
        str(start),
        "--to",
        str(end),
        "--out",
        str(page),
    )
    assert code == 0, err
    export = tmp_path / "q3.audit.jsonl"
    assert export.exists() and f"made from the export {export}" in out
    command = out.strip().splitlines()[-1].removeprefix("re-verify offline: ")
    assert command == f"corral audit verify --file {export}"
    argv = shlex.split(command)
    assert argv[:1] == ["corral"] and corral(capsys, *argv[1:])[0] == 0
    text = page.read_text(encoding="utf-8")
    assert f"the controller at {controller.address}" in text and str(export) in text
    remote = report_json(
        capsys,
        scripted,
        "--controller",
        controller.address,
        "--export",
        str(tmp_path / "again.jsonl"),
    )
    assert facts(remote) == facts(offline)
    checks = remote["proof"]["checks"]
    assert [c["what"] for c in checks] == [
        "the controller's audit log (VerifyAudit)",
        f"the export file {tmp_path / 'again.jsonl'}",
    ]
    assert all(c["ok"] for c in checks)
    from_file = report_json(capsys, scripted, "--file", str(export))
    assert facts(from_file) == facts(offline)


def test_an_unreachable_controller_exits_69_and_writes_nothing(
    scripted: Scripted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "r.html"
    code, _, err = corral(
        capsys,
        "audit",
        "report",
        "--controller",
        "127.0.0.1:1",
        "--timeout",
        "2",
        "--from",
        "0",
        "--to",
        "1",
        "--out",
        str(page),
    )
    assert code == 69 and "unavailable" in err
    assert list(tmp_path.iterdir()) == []  # neither the page nor a partial export
