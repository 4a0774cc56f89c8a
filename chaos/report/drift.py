"""Drift over a long run: does anything trend while the load holds still?

A soak passes when nothing the run can measure about itself creeps: the controller's
resident memory, the cost of one sampling tick, the achieved connection rate and the p99
latency. For each, the series over the load window (less a warm-up: TIME_WAIT builds up for
its first 60 s, and the tick cost with it) is cut into equal time bins, each bin's median
taken, and a least-squares line fitted through the medians; its **change over the window**
(slope × length) is compared with a limit: a fraction of the series' level (its median), but
never below an absolute floor that is noise on any machine. Medians of bins make one slow
second, a GC pause or a burst of the host's other work count once, not as a trend.

| series | source | bad when | limit |
| --- | --- | --- | --- |
| controller RSS | `controller.rss_bytes` | rises | 10 % of its level, at least 8 MiB |
| tick cost | `collector_cost.duration_ms` (`collector=sampler`) | rises | 50 %, at least 5 ms |
| achieved rate | `load.started` (connections begun per second) | falls | 10 %, at least 1/s |
| p99 latency | `load.total_p99_us` (connect start to close done) | rises | 50 %, at least 5 ms |

A run recorded before the ``load`` measurement existed is judged on the first two only.

Windows shorter than :data:`MIN_JUDGED_S` after the warm-up are "not judged" (too short to
tell a trend from noise); a judged FAIL makes ``chaos run`` and ``chaos report --check``
exit 10, so a soak can be gated on it.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from chaos.report.data import XY, RunData

#: seconds of the load window left out at its start (TIME_WAIT and caches fill)
WARMUP_S = 60.0
#: a shorter judged window gives no verdict
MIN_JUDGED_S = 120.0
#: time bins of the judged window (fewer when there are few points)
BINS = 20


@dataclass(frozen=True)
class DriftRule:
    key: str
    label: str
    unit: str
    worse: int  # +1: a rise is the bad direction; -1: a fall
    fraction: float  # of the series' level the fitted change may reach
    floor: float  # a change below this always passes (noise)


RULES = (
    DriftRule("controller_rss", "controller RSS", "MiB", +1, 0.10, 8.0),
    DriftRule("tick_cost", "sampling tick cost", "ms", +1, 0.50, 5.0),
    DriftRule("achieved_rate", "achieved rate", "conn/s", -1, 0.10, 1.0),
    DriftRule("p99_latency", "p99 latency", "ms", +1, 0.50, 5.0),
)


@dataclass(frozen=True)
class SeriesDrift:
    key: str
    label: str
    unit: str
    worse: int  # the rule's bad direction
    level: float  # median over the judged window
    change: float  # fitted change over the judged window (signed)
    limit: float  # the largest change in the bad direction that passes
    samples: int
    passed: bool


@dataclass(frozen=True)
class Drift:
    verdict: str  # PASS, FAIL or "not judged"
    reason: str
    window_s: tuple[float, float] | None  # judged window, seconds since the run's start
    series: tuple[SeriesDrift, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "window_s": [round(t, 1) for t in self.window_s] if self.window_s else None,
            "series": [
                {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(s).items()}
                for s in self.series
            ],
        }


def fitted_change(xy: XY, bins: int = BINS) -> float:
    """The least-squares line through the medians of ``bins`` equal time bins, as its
    change from the first to the last point's time."""
    start, end = xy[0][0], xy[-1][0]
    span = end - start
    if span <= 0:
        return 0.0
    bins = max(2, min(bins, len(xy) // 3))
    grouped: list[list[float]] = [[] for _ in range(bins)]
    for t, v in xy:
        grouped[min(bins - 1, int((t - start) / span * bins))].append(v)
    centres = [
        (start + (i + 0.5) * span / bins, statistics.median(vs))
        for i, vs in enumerate(grouped)
        if vs
    ]
    if len(centres) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in centres)
    mean_v = statistics.fmean(v for _, v in centres)
    var = sum((t - mean_t) ** 2 for t, _ in centres)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in centres) / var
    return slope * span


def judge_series(rule: DriftRule, xy: XY) -> SeriesDrift:
    level = statistics.median(v for _, v in xy)
    change = fitted_change(xy)
    limit = max(rule.floor, rule.fraction * abs(level))
    return SeriesDrift(
        rule.key,
        rule.label,
        rule.unit,
        rule.worse,
        level,
        change,
        limit,
        len(xy),
        rule.worse * change <= limit,
    )


def drift_series(run: RunData) -> dict[str, XY]:
    """The four series in their rules' units (absent when the run has no such data)."""
    rss = run.series("controller", "rss_bytes", key=lambda p: "controller")
    tick = run.series(
        "collector_cost",
        "duration_ms",
        key=lambda p: "sampler",
        where=lambda p: p.tags.get("collector") == "sampler",
    )
    return {
        "controller_rss": [(t, v / 2**20) for t, v in rss.get("controller", [])],
        "tick_cost": tick.get("sampler", []),
        # the per-second load series (connections started; p99 of connect start to close)
        "achieved_rate": run.load.rate,
        "p99_latency": run.load.percentiles.get("p99", []),
    }


def judge(run: RunData) -> Drift:
    """The run's drift verdict (see the module docstring)."""
    if run.load_window is None:
        return Drift("not judged", "no load window in the journal", None, ())
    start, end = run.load_window[0] + WARMUP_S, run.load_window[1]
    if end - start < MIN_JUDGED_S:
        return Drift(
            "not judged",
            f"the load ran {run.load_window[1] - run.load_window[0]:.0f} s; drift needs "
            f"{WARMUP_S + MIN_JUDGED_S:.0f} s or more ({WARMUP_S:.0f} s of warm-up)",
            None,
            (),
        )
    judged = []
    series = drift_series(run)
    for rule in RULES:
        xy = [(t, v) for t, v in series[rule.key] if start <= t <= end]
        if len(xy) >= 6:
            judged.append(judge_series(rule, xy))
    if not judged:
        return Drift("not judged", "no samples in the judged window", (start, end), ())
    failed = [s for s in judged if not s.passed]
    reason = (
        "; ".join(f"{s.label} {s.change:+.1f} {s.unit} (limit {s.limit:.1f})" for s in failed)
        if failed
        else f"{len(judged)} series within their limits"
    )
    return Drift("FAIL" if failed else "PASS", reason, (start, end), tuple(judged))
