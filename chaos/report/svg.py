"""Time-series charts as inline SVG, made in Python: no JavaScript, no fonts, no libraries.

A chart is a plot area with nice axis ticks (units in the axis title), one polyline per
series, shaded and labelled fault windows, and dotted markers (load start/end). Long series
are reduced to the min and max of every pixel column, so an hour at 1 s still draws every
spike without writing 3600 points per line. Gaps in a series (a collector that runs every
10 s, or points left out) break the line instead of drawing a slope across them.

The ``<svg>`` carries its geometry (``data-t0``, ``data-t1``, ``data-left``, ``data-width``)
and each band its fault id, so tests can check that a band sits where its fault happened.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

XY = Sequence[tuple[float, float]]

# Tableau 10: distinct and readable on white; the fault band is amber so that it never
# looks like a series.
PALETTE = (
    "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1",
    "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac",
)  # fmt: skip
BAND_FILL = "#f5b400"
BAND_EDGE = "#b58100"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"


@dataclass
class Line:
    label: str
    points: XY
    color: str
    dash: str | None = None  # SVG stroke-dasharray
    width: float = 1.8
    # A per-interval series (the load's seconds): each point holds its value for ``step``
    # seconds from its time, drawn as a staircase; an interval without a point is a gap.
    step: float | None = None


@dataclass
class Band:
    id: str
    label: str
    start: float
    end: float | None  # None: to the right edge (never reverted)


@dataclass
class Chart:
    lines: list[Line]
    x_range: tuple[float, float]
    y_title: str
    bands: list[Band] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)  # vertical dotted lines
    y_format: Callable[[float], str] | None = None
    y_max: float | None = None  # fixed top (e.g. 1.0 for a utilisation)
    empty_text: str = "no data"
    width: int = 1200
    height: int = 250


# Plot area margins: room for y tick labels and the axis title on the left, band labels on top.
LEFT, RIGHT, TOP, BOTTOM = 74, 16, 24, 38


def nice_step(span: float, target: int) -> float:
    """A 1-2-5 step that cuts ``span`` into about ``target`` intervals."""
    if span <= 0:
        return 1.0
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


def time_step(span: float, target: int = 10) -> float:
    return next((s for s in _TIME_STEPS if span / s <= target), 10 ** math.ceil(math.log10(span)))


def fmt_time(seconds: float, span: float) -> str:
    seconds = round(seconds)
    if span <= 180:
        return f"{seconds}s"
    if span <= 3 * 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}"


def fmt_number(value: float) -> str:
    """Compact tick label: 950, 1.2k, 25k, 1.5M, 0.25."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if size >= 1000:
        return f"{value / 1e3:.2g}k" if value % 100 == 0 else f"{value:.0f}"
    if size == 0 or size >= 1:
        return f"{value:.4g}"
    return f"{value:.2g}"


def fmt_percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def decimate(points: XY, x0: float, x1: float, columns: int) -> list[tuple[float, float]]:
    """Keep the first, min, max and last point of every pixel column (order preserved)."""
    if len(points) <= columns * 2:
        return list(points)
    span = (x1 - x0) or 1.0
    out: list[tuple[float, float]] = []
    bucket: list[tuple[float, float]] = []
    current = None
    for point in points:
        column = int((point[0] - x0) / span * columns)
        if column != current and bucket:
            out.extend(_summarise(bucket))
            bucket = []
        current = column
        bucket.append(point)
    if bucket:
        out.extend(_summarise(bucket))
    return out


def _summarise(bucket: list[tuple[float, float]]) -> list[tuple[float, float]]:
    keep = {0, len(bucket) - 1}
    keep.add(min(range(len(bucket)), key=lambda i: bucket[i][1]))
    keep.add(max(range(len(bucket)), key=lambda i: bucket[i][1]))
    return [bucket[i] for i in sorted(keep)]


def split_steps(points: XY, step: float) -> list[list[tuple[float, float]]]:
    """Staircases: each point becomes (t, v), (t + step, v); a run ends where an interval
    has no point."""
    runs: list[list[tuple[float, float]]] = []
    last_end = None
    for t, v in points:
        if last_end is None or abs(t - last_end) > step * 1e-3:
            runs.append([])
        runs[-1] += [(t, v), (t + step, v)]
        last_end = t + step
    return runs


def split_gaps(points: XY) -> list[list[tuple[float, float]]]:
    """Runs of points without a gap longer than 3 typical intervals (at least 2.5 s)."""
    if len(points) < 2:
        return [list(points)] if points else []
    steps = sorted(b[0] - a[0] for a, b in itertools.pairwise(points))
    limit = max(3 * steps[len(steps) // 2], 2.5)
    runs: list[list[tuple[float, float]]] = [[points[0]]]
    for prev, point in itertools.pairwise(points):
        if point[0] - prev[0] > limit:
            runs.append([])
        runs[-1].append(point)
    return runs


class Scale:
    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        self.d0, self.d1, self.r0, self.r1 = d0, d1, r0, r1

    def __call__(self, value: float) -> float:
        span = (self.d1 - self.d0) or 1.0
        return self.r0 + (value - self.d0) / span * (self.r1 - self.r0)


def render(chart: Chart) -> str:
    """The chart as one ``<svg>`` element (a string)."""
    w, h = chart.width, chart.height
    pw, ph = w - LEFT - RIGHT, h - TOP - BOTTOM
    t0, t1 = chart.x_range
    if t1 <= t0:
        t1 = t0 + 1.0
    values = [y for line in chart.lines for _, y in line.points]
    y_top = chart.y_max if chart.y_max is not None else max(values, default=0.0)
    y_step = nice_step(y_top or 1.0, 5)
    if chart.y_max is None:
        y_top = max(y_step, math.ceil((y_top or 1.0) / y_step) * y_step)
    x = Scale(t0, t1, LEFT, LEFT + pw)
    y = Scale(0.0, y_top, TOP + ph, TOP)
    y_fmt = chart.y_format or fmt_number

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
        f'role="img" class="chart" data-t0="{t0:g}" data-t1="{t1:g}" data-left="{LEFT}" '
        f'data-width="{pw}" data-viewbox-width="{w}" style="{FONT};font-size:12px">'
    ]
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fbfbfd"/>')
    # Grid and y ticks.
    tick = 0.0
    while tick <= y_top + y_step * 1e-6:
        py = y(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py:.1f}" y2="{py:.1f}" '
            f'stroke="#e3e6ea" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end" fill="#555">'
            f"{escape(y_fmt(tick))}</text>"
        )
        tick += y_step
    # X ticks.
    span = t1 - t0
    step = time_step(span)
    tick = math.ceil(t0 / step) * step
    while tick <= t1 + 1e-9:
        px = x(tick)
        parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#eef0f2"/>'
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}" '
            f'stroke="#888"/><text x="{px:.1f}" y="{TOP + ph + 17}" text-anchor="middle" '
            f'fill="#555">{fmt_time(tick, span)}</text>'
        )
        tick += step
    parts.append(
        f'<text x="{LEFT + pw / 2:.0f}" y="{h - 4}" text-anchor="middle" fill="#444">'
        "time since run start</text>"
        f'<text transform="translate(14 {TOP + ph / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'fill="#444">{escape(chart.y_title)}</text>'
    )
    parts += _bands(chart.bands, x, t1, ph)
    for at, label in chart.marks:
        if t0 <= at <= t1:
            px = x(at)
            # Label on the side with more room, so that a mark at the edge stays readable.
            right = px < LEFT + pw / 2
            lx, anchor = (px + 3, "start") if right else (px - 3, "end")
            parts.append(
                f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#9aa0a6" '
                f'stroke-dasharray="2 3"/><text x="{lx:.1f}" y="{TOP + ph - 5}" '
                f'text-anchor="{anchor}" fill="#80868b" font-size="10">{escape(label)}</text>'
            )
    # Series; values are clamped to the axis (no clipPath: its id would have to be unique
    # in the page, and the output should be the same for the same run).
    parts.append('<g fill="none" stroke-linejoin="round" stroke-linecap="round">')
    for line in chart.lines:
        parts.append(_polyline(line, x, y, t0, t1, pw, y_top))
    parts.append("</g>")
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#c4c8cc"/>'
    )
    if not values:
        parts.append(
            f'<text x="{LEFT + pw / 2:.0f}" y="{TOP + ph / 2:.0f}" text-anchor="middle" '
            f'fill="#999" font-size="14">{escape(chart.empty_text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _bands(bands: list[Band], x: Scale, t1: float, ph: float) -> list[str]:
    parts = []
    for index, band in enumerate(bands):
        end = t1 if band.end is None else band.end
        x0, x1 = x(band.start), x(end)
        label = band.label + ("" if band.end is not None else " (not reverted)")
        # Stagger labels of neighbouring faults so that they do not overprint.
        ly = TOP - 7 if index % 2 == 0 else TOP + 12
        parts.append(
            f'<g class="fault" data-fault="{escape(band.id)}" data-start="{band.start:g}" '
            f'data-end="{end:g}"><title>{escape(label)}</title>'
            f'<rect x="{x0:.2f}" y="{TOP}" width="{max(x1 - x0, 1.5):.2f}" height="{ph}" '
            f'fill="{BAND_FILL}" fill-opacity="0.16"/>'
            f'<line x1="{x0:.2f}" x2="{x0:.2f}" y1="{TOP}" y2="{TOP + ph}" stroke="{BAND_EDGE}" '
            f'stroke-dasharray="4 3"/>'
            f'<line x1="{x1:.2f}" x2="{x1:.2f}" y1="{TOP}" y2="{TOP + ph}" stroke="{BAND_EDGE}" '
            f'stroke-dasharray="4 3"/>'
            f'<text x="{x0 + 3:.1f}" y="{ly}" fill="#8a6200" font-size="11" font-weight="600">'
            f"⚡ {escape(label)}</text></g>"
        )
    return parts


def _polyline(
    line: Line, x: Scale, y_scale: Scale, t0: float, t1: float, pw: float, y_top: float
) -> str:
    def y(value: float) -> float:
        return y_scale(min(max(value, 0.0), y_top))

    dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
    out = [f'<g class="series" data-label="{escape(line.label)}" data-points="{len(line.points)}">']
    out.append(f"<title>{escape(line.label)}</title>")
    runs = split_steps(line.points, line.step) if line.step else split_gaps(line.points)
    for run in runs:
        run = decimate(run, t0, t1, int(pw))
        if len(run) == 1:  # a lone point would be invisible as a polyline
            ((px, py),) = [(x(run[0][0]), y(run[0][1]))]
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.2" fill="{line.color}"/>')
            continue
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in run)
        out.append(
            f'<polyline points="{coords}" stroke="{line.color}" stroke-width="{line.width}"{dash}/>'
        )
    out.append("</g>")
    return "".join(out)
