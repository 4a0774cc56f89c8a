"""Reading the per-second load series back: the ``load`` and ``load_failures`` points.

The workers' side channel writes one ``load`` point per wall-clock second in which the load
ran, stamped with the start of that second, and one ``load_failures`` point per (second,
failure class); docs/metrics.md has the fields. Everything that judges or draws the load
(the report, ``expect``, ``sweep``, live progress, ``compare``) reads it through
:func:`load_seconds`, never Locust's rolling stats, which arrive ~5 s late and in whole
milliseconds. Percentiles over a window of several seconds come from the merged histograms
(:func:`chaos.load.series.window_latency`), not from these per-second values.

Works on anything with ``measurement``, ``tags``, ``fields`` and ``time_ns`` (the
controller's :class:`~chaos.record.point.Sample` as well as a parsed
:class:`~chaos.record.lineproto.Point`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chaos.load.series import PHASES, window_latency
from chaos.record.schema import LOAD as MEASUREMENT
from chaos.record.schema import LOAD_FAILURES as FAILURES_MEASUREMENT

LATENCY_PHASE = "total"  # "the" latency of a connection: connect start to close done
PERCENTILES = ("p50", "p90", "p99", "max")
COUNTS = ("users", "started", "completed", "failed")


class PointLike(Protocol):
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, Any]
    time_ns: int | None


@dataclass
class LoadSecond:
    """One second of load (``second``: unix seconds at its start)."""

    second: int
    users: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # failure class -> count
    latency_us: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> p50.. max

    def percentile_us(self, phase: str, name: str) -> int | None:
        return self.latency_us.get(phase, {}).get(name)


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def is_load_point(point: PointLike) -> bool:
    return point.measurement in (MEASUREMENT, FAILURES_MEASUREMENT)


def load_seconds(points: Iterable[PointLike]) -> dict[int, LoadSecond]:
    """Second -> :class:`LoadSecond`, in time order. Counts of several ``load`` points of
    one second (several load namespaces) add up; their percentiles cannot, so each second
    keeps the highest (the conservative reading)."""
    out: dict[int, LoadSecond] = {}
    for point in points:
        if point.time_ns is None or not is_load_point(point):
            continue
        second = point.time_ns // 1_000_000_000
        entry = out.get(second) or out.setdefault(second, LoadSecond(second))
        fields = point.fields
        if point.measurement == FAILURES_MEASUREMENT:
            name, count = point.tags.get("class"), _int(fields.get("count"))
            if name and count:
                entry.classes[name] = entry.classes.get(name, 0) + count
            continue
        for name in COUNTS:
            value = _int(fields.get(name))
            if value is not None:
                setattr(entry, name, getattr(entry, name) + value)
        for phase in PHASES:
            if not _int(fields.get(f"{phase}_count")):
                continue
            phase_us = entry.latency_us.setdefault(phase, {})
            for name in PERCENTILES:
                value = _int(fields.get(f"{phase}_{name}_us"))
                if value is not None:
                    phase_us[name] = max(value, phase_us.get(name, 0))
    return dict(sorted(out.items()))


def in_window(seconds: Mapping[int, LoadSecond], start: float, end: float) -> list[LoadSecond]:
    """The seconds that begin in [start, end)."""
    return [s for t, s in seconds.items() if start <= t < end]


@dataclass(frozen=True)
class LoadTotals:
    seconds: int
    started: int
    completed: int
    failed: int
    classes: dict[str, int]

    @property
    def rate(self) -> float:
        """Connections started per second over the window."""
        return self.started / self.seconds if self.seconds else 0.0


def totals(window: Iterable[LoadSecond]) -> LoadTotals:
    rows = list(window)
    classes: dict[str, int] = {}
    for row in rows:
        for name, count in row.classes.items():
            classes[name] = classes.get(name, 0) + count
    return LoadTotals(
        seconds=len(rows),
        started=sum(r.started for r in rows),
        completed=sum(r.completed for r in rows),
        failed=sum(r.failed for r in rows),
        classes=classes,
    )


def issuing_window(seconds: Mapping[int, LoadSecond]) -> tuple[float, float] | None:
    """[first second a connection started, :func:`issuing_end`): the load's own window."""
    started = [t for t, s in seconds.items() if s.started > 0]
    return (float(min(started)), float(max(started) + 1)) if started else None


def window_latency_us(
    run_dir: Path, start: float, end: float, phase: str = LATENCY_PHASE
) -> dict[str, float | int]:
    """count, p50_us, p90_us, p99_us, max_us and mean_us of ``phase`` over the seconds in
    [start, end), merged from the workers' histograms (percentiles of percentiles would be
    wrong); empty when the run kept none."""
    summary = window_latency(run_dir, phase, start, end)
    if not summary.count:
        return {}
    return {
        "count": summary.count,
        **{name: getattr(summary, name) for name in ("p50_us", "p90_us", "p99_us", "max_us")},
        "mean_us": round(summary.mean_us, 1),
    }


def issuing_end(seconds: Mapping[int, LoadSecond]) -> float | None:
    """Where the load stopped issuing new connections: the end of the last second in which
    a connection started (None without load seconds)."""
    started = [t for t, s in seconds.items() if s.started > 0]
    return float(max(started) + 1) if started else None
