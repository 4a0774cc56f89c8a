"""Expectations: ``metric op value`` checked over a run's samples, phase by phase.

A scenario's ``expect:`` clauses gate a release: ``chaos run`` exits 10 when any fails.

Phases (``when``), from the journal's fault events and the load series:

* ``baseline``: from the start of the load to the first fault's apply (or only the last
  ``within`` seconds of it);
* ``during``: inside the fault windows (apply → revert), cut at the load's stop; with
  ``fault: N`` only that fault's;
* ``after``: from the (last) revert to the load's stop, or only ``within`` seconds of it
  — "CLOSE_WAIT returns to baseline within 30 s" is ``when: after, within: 30s, agg: last``;
* ``end``: the whole load phase, start to stop.

The load *starts* with the first second of the ``load`` series in which a connection
started (not before the journal's ``load.ramp``: on a busy host the workers start their
users seconds after the master does) and *stops* where it stopped issuing new connections:
the end of the last second in which a connection started. A run without the series uses
the journal's ``load.ramp`` (``load.start`` when the workers never joined) and ``load.end``.
Not later: once Locust stops its users the sockets drain, and a "last value" taken then
would describe the load's teardown, not the system. Every
window is half-open, ``[first, stop)``: a phase's first sample is the first one taken at or
after its start (a sample at the apply instant belongs to ``during``, not ``baseline``), and
its last sample the last one taken before its stop. Per-second ``load`` points are stamped
with the start of their second, so a second belongs to the phase in which it began.

The metric is ``measurement.field`` (see docs/metrics.md). Points are filtered by ``role``
and by ``where`` tags (``tcp_states`` defaults to its ``family=all`` totals); the
points of one timestamp are summed across namespaces, so ``role`` unset means the whole lab.
The window's series becomes one number by ``agg``: ``max`` (default: the peak, so ``>=``
means "reached" and ``<=`` means "never exceeded"), ``min``, ``mean``, ``last``, ``first``,
``sum`` (for per-interval counter deltas such as ``tcp_counters``) or ``delta``
(last − first, for cumulative values). ``==`` and ``!=`` default to ``last``.

``value`` is a number or an arithmetic expression (``+ - * /``, parentheses, ``min()``,
``max()``) over these names: ``rate`` (the load's target connections/s, 0 when unset),
``users``, ``duration`` (the load phase's seconds), ``fault_duration`` (the seconds of
the windows checked), and ``baseline`` (the same metric and aggregate in the baseline phase).
A missing series or an empty window fails the expectation: no data never passes.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from typing import Any, Protocol

from chaos.load.seconds import issuing_window, load_seconds
from chaos.record.journal import FaultWindow, fault_windows
from chaos.record.schema import TCP_STATES, is_family_total
from chaos.scenario.expression import evaluate_expression, uses_baseline
from chaos.scenario.model import Expectation, Scenario


class Point(Protocol):
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, Any]
    time_ns: int


# --- phases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Wall-clock seconds of the load phase and of each fault window, in time order."""

    start: float
    end: float
    faults: tuple[FaultWindow, ...] = ()  # each with its ``reverted`` time

    @classmethod
    def from_journal(
        cls,
        events: Iterable[Mapping[str, Any]],
        issuing: tuple[float, float] | None = None,
    ) -> Timeline:
        """Windows from ``fault.apply``/``fault.revert`` (:func:`fault_windows`): the steps
        of a ramp form one window; an irreversible fault (kill) is an instant; one never
        reverted lasts to the end of the load. ``issuing``: the seconds in which the load
        issued connections (see the module docstring); the timeline keeps to them within the
        journal's window."""
        events = list(events)
        start = end = None
        for event in events:
            name, ts = event.get("event"), float(event.get("ts", 0.0))
            # load.ramp (the workers joined) is where the load really starts
            if (name == "load.start" and start is None) or name == "load.ramp":
                start = ts
            elif name == "load.end":
                end = ts
        if start is None:
            raise ValueError("the journal has no load.start event")
        windows = fault_windows(events)
        if end is None:
            reverts = [w.reverted for w in windows if w.reverted is not None]
            end = max([start, *(w.applied for w in windows), *reverts])
        if issuing is not None and start < issuing[1] < end:
            start, end = max(start, issuing[0]), issuing[1]
        lasting = [replace(w, reverted=w.until(end)) for w in windows]
        return cls(start, end, tuple(lasting))


def windows_for(exp: Expectation, timeline: Timeline) -> list[tuple[float, float]]:
    """Half-open [start, stop) windows: a sample taken at the apply instant is not baseline,
    one taken at the load's stop is not part of the load."""
    end = timeline.end
    faults = [w for w in timeline.faults if exp.fault is None or w.spec == exp.fault]
    if exp.when == "end":
        return [(timeline.start, end)]
    if not faults:
        return []
    if exp.when == "baseline":
        stop = faults[0].applied
        start = timeline.start if exp.within is None else max(timeline.start, stop - exp.within)
        return [(start, stop)]
    if exp.when == "during":
        return [(w.applied, min(w.until(end), end)) for w in faults if w.applied < end]
    last = max(w.until(end) for w in faults)
    stop = end if exp.within is None else min(end, last + exp.within)
    return [(last, stop)]


def run_timeline(journal: Iterable[Mapping[str, Any]], points: Iterable[Point]) -> Timeline:
    """The timeline of a finished run: its journal, stopped where the load stopped issuing
    connections (from the ``load`` points among ``points``)."""
    return Timeline.from_journal(journal, issuing_window(load_seconds(points)))


# --- series and aggregates -----------------------------------------------------------------


# Measurements that carry a family=all total beside per-family points: the total is the default.
_FAMILY_TOTALS = {TCP_STATES}


def series(
    points: Iterable[Point], metric: str, role: str | None, where: Mapping[str, str]
) -> list[tuple[float, float]]:
    """(seconds, value) per timestamp, summed across the matching points of that timestamp."""
    measurement, field = metric.split(".", 1)
    sums: dict[int, float] = defaultdict(float)
    for p in points:
        if p.measurement != measurement or field not in p.fields:
            continue
        tags = p.tags
        if role is not None and tags.get("role") != role:
            continue
        if measurement in _FAMILY_TOTALS and "family" not in where and not is_family_total(tags):
            continue
        if any(tags.get(k) != v for k, v in where.items()):
            continue
        value = p.fields[field]
        if isinstance(value, bool | int | float):
            sums[p.time_ns] += float(value)
    return [(t / 1e9, v) for t, v in sorted(sums.items())]


def aggregate(values: list[float], agg: str) -> float:
    match agg:
        case "max":
            return max(values)
        case "min":
            return min(values)
        case "mean":
            return sum(values) / len(values)
        case "last":
            return values[-1]
        case "first":
            return values[0]
        case "sum":
            return sum(values)
        case "delta":
            return values[-1] - values[0]
    raise ValueError(f"unknown aggregate {agg}")


def default_agg(exp: Expectation) -> str:
    return exp.agg or ("last" if exp.op in ("==", "!=") else "max")


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class Verdict:
    metric: str
    op: str
    value: str
    when: str
    role: str | None
    agg: str
    threshold: float | None
    observed: float | None
    passed: bool
    detail: str
    label: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Back from :meth:`as_dict` (``summary.json``); a key an older run lacks is empty."""
        known = {f.name for f in dataclass_fields(cls)}
        values = {name: data.get(name) for name in known}
        values["passed"] = data.get("passed") is True
        values["label"] = data.get("label") or ""
        values.update({k: str(data.get(k) or "") for k in ("metric", "op", "value", "when")})
        values.update({k: str(data.get(k) or "") for k in ("agg", "detail")})
        return cls(**values)

    def describe(self) -> str:
        where = f" at {self.role}" if self.role else ""
        observed = "no data" if self.observed is None else f"{self.observed:g}"
        threshold = "?" if self.threshold is None else f"{self.threshold:g}"
        return (
            f"{self.agg}({self.metric}){where} {self.when}: {observed} {self.op} "
            f"{threshold} ({self.value})"
        )


def _in_windows(data: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    return [v for t, v in data if any(a <= t < b for a, b in windows)]


def evaluate(scenario: Scenario, points: list[Point], timeline: Timeline) -> list[Verdict]:
    """Check every expectation of ``scenario``; a missing series fails, never passes."""
    load = scenario.load
    base_names = {
        "rate": float(load.rate or 0.0),
        "users": float(load.users),
        "duration": timeline.end - timeline.start,
    }
    verdicts = []
    for exp in scenario.expect:
        agg = default_agg(exp)
        data = series(points, exp.metric, exp.role, exp.where)
        windows = windows_for(exp, timeline)
        values = _in_windows(data, windows)

        def verdict(
            threshold: float | None,
            observed: float | None,
            ok: bool,
            detail: str,
            exp: Expectation = exp,
            agg: str = agg,
        ) -> Verdict:
            return Verdict(
                exp.metric,
                exp.op,
                str(exp.value),
                exp.when,
                exp.role,
                agg,
                threshold,
                observed,
                ok,
                detail,
                exp.label,
            )

        if not values:
            verdicts.append(
                verdict(None, None, False, f"no {exp.metric} samples in the {exp.when} window")
            )
            continue
        observed = aggregate(values, agg)
        names = dict(base_names, fault_duration=sum(b - a for a, b in windows))
        if uses_baseline(exp):
            base_exp = exp.model_copy(update={"when": "baseline", "within": None})
            base_values = _in_windows(data, windows_for(base_exp, timeline))
            if not base_values:
                verdicts.append(
                    verdict(None, observed, False, "no samples before the fault for the baseline")
                )
                continue
            names["baseline"] = aggregate(base_values, agg)
        threshold = (
            float(exp.value)
            if not isinstance(exp.value, str)
            else evaluate_expression(exp.value, names)
        )
        ok = math.isfinite(observed) and _OPS[exp.op](observed, threshold)
        verdicts.append(verdict(threshold, observed, ok, f"{len(values)} samples"))
    return verdicts
