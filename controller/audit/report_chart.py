"""The geometry of the report's conformance chart: numbers the template draws as SVG.

One series per group (its time-weighted share conformant in each bucket of
the period, drawn as steps; gaps where the group had no instance), a strip
of taint counts per bucket below the plot, and markers for the buckets in
which a rollout or rollback happened and for those in which the breaker
opened. Coordinates are in the SVG's viewBox units; nothing here writes
markup.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.audit.record import EventKind
from controller.audit.report_facts import BreakerEvent, Report
from controller.audit.report_format import iso

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 744, 14, 214
STRIP_TOP, STRIP_BOTTOM = 226, 254
# Distinguishable in colour and in grey print; past ten groups the dash pattern differs.
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
)  # fmt: skip
DASHES = ("", "6 3", "2 2")
_HOW = {str(EventKind.ROLLOUT): "rollout", str(EventKind.ROLLBACK): "rollback"}


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Series:
    group: str
    color: str
    dash: str
    segments: tuple[tuple[Point, ...], ...]


@dataclass(frozen=True, slots=True)
class Marker:
    """Something happened in the bucket starting at ``x`` (``count`` of them)."""

    x: float
    width: float
    count: int
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    strip_top: int
    strip_bottom: int
    series: tuple[Series, ...]
    taints: tuple[Marker, ...]
    changes: tuple[Marker, ...]
    breakers: tuple[Marker, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


def chart(report: Report) -> Chart:
    """Lay out the conformance-over-time chart of ``report``."""
    step = (RIGHT - LEFT) / report.buckets
    series = tuple(
        Series(
            group.group,
            PALETTE[n % len(PALETTE)],
            DASHES[(n // len(PALETTE)) % len(DASHES)],
            _segments(group.buckets, step),
        )
        for n, group in enumerate(report.groups)
    )
    taints = _counts([t.at_ms for t in report.taints], report)
    most = max((c for c in taints.values()), default=0)
    taint_markers = tuple(
        Marker(
            LEFT + i * step,
            max(step, 1.5),
            count,
            max(2.0, (STRIP_BOTTOM - STRIP_TOP) * count / most),
            f"{count} taint(s) from {iso(_bucket_start(report, i))}",
        )
        for i, count in sorted(taints.items())
    )
    changes = [
        (c.at_ms, f"{_HOW[c.kind]} {c.group} at {iso(c.at_ms)} to {c.to_image}")
        for c in report.changes
        if c.kind != EventKind.GROUP_CREATED
    ]
    openings = [
        (b.at_ms, f"breaker opened in {b.group} at {iso(b.at_ms)}{_tainted(b)}")
        for b in report.breaker
        if b.opened
    ]
    return Chart(
        WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM, STRIP_TOP, STRIP_BOTTOM,
        series, taint_markers, _markers(changes, report, step), _markers(openings, report, step),
        _x_ticks(report), _y_ticks(),
    )  # fmt: skip


def _y(share: float) -> float:
    return round(BOTTOM - (BOTTOM - TOP) * share, 2)


def _segments(buckets: tuple[float | None, ...], step: float) -> tuple[tuple[Point, ...], ...]:
    """Steps over consecutive buckets that had instances; a gap ends a segment."""
    out: list[tuple[Point, ...]] = []
    current: list[Point] = []
    for i, share in enumerate(buckets):
        if share is None:
            if current:
                out.append(tuple(current))
                current = []
            continue
        y = _y(share)
        current.append(Point(round(LEFT + i * step, 2), y))
        current.append(Point(round(LEFT + (i + 1) * step, 2), y))
    if current:
        out.append(tuple(current))
    return tuple(out)


def _bucket_of(report: Report, at_ms: int) -> int:
    width = (report.to_ms - report.chart_from_ms) / report.buckets
    return min(int((at_ms - report.chart_from_ms) / width), report.buckets - 1)


def _bucket_start(report: Report, index: int) -> int:
    return report.chart_from_ms + int(
        index * (report.to_ms - report.chart_from_ms) / report.buckets
    )


def _counts(times: list[int], report: Report) -> dict[int, int]:
    counts: dict[int, int] = {}
    for at in times:
        if report.chart_from_ms <= at <= report.to_ms:
            index = _bucket_of(report, at)
            counts[index] = counts.get(index, 0) + 1
    return counts


def _markers(events: list[tuple[int, str]], report: Report, step: float) -> tuple[Marker, ...]:
    """A marker mid-bucket for each bucket in which one of ``events`` (time, what) happened.

    Its title says what happened there: the first five, then ``…``.
    """
    lines: dict[int, list[str]] = {}
    for at, text in events:
        if report.chart_from_ms <= at <= report.to_ms:
            lines.setdefault(_bucket_of(report, at), []).append(text)
    return tuple(
        Marker(
            LEFT + (i + 0.5) * step,
            step,
            len(rows),
            0.0,
            "; ".join(rows[:5]) + (" …" if len(rows) > 5 else ""),
        )
        for i, rows in sorted(lines.items())
    )


def _tainted(event: BreakerEvent) -> str:
    if event.tainted is None or event.size is None:
        return ""
    return f" ({event.tainted} of {event.size} tainted)"


def _x_ticks(report: Report, count: int = 5) -> tuple[Tick, ...]:
    span = report.to_ms - report.chart_from_ms
    return tuple(
        Tick(
            round(LEFT + (RIGHT - LEFT) * n / (count - 1), 2),
            iso(report.chart_from_ms + span * n // (count - 1))[:19].replace("T", " "),
        )
        for n in range(count)
    )


def _y_ticks() -> tuple[Tick, ...]:
    return tuple(Tick(_y(share / 100), f"{share} %") for share in (0, 25, 50, 75, 100))
