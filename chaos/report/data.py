"""Load a run directory into what the report plots and summarises.

Sources, each optional except the journal and ``samples.lp`` (a run directory without both is
not one the report can say anything about):

* ``journal.jsonl``: run and load start/end, fault windows (``fault.apply``/``fault.revert``).
* ``samples.lp``: every collected point (docs/metrics.md), read with
  :func:`chaos.record.lineproto.read_points`. Fault windows fall back to its ``chaos_event``
  points when the journal has none.
* Load over time: the per-second ``load`` series and ``load_failures`` by class (see
  :mod:`chaos.load.seconds`), on the run's own clock. Each second's value is drawn as a
  step over the second it describes. Locust's own CSVs (rolling stats, ~5 s late, whole
  milliseconds) are artefacts of the run, never read here.
* ``summary.json``: totals of the load and expectation results, when ``chaos run`` wrote it.
* ``sweep.json``: a capacity sweep's steps, drawn as marks on every plot.

Times are kept as seconds since the run started (``t0``): every plot shares that x axis.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.errors import SinkError
from chaos.load.seconds import FAILURES_MEASUREMENT as LOAD_FAILURES
from chaos.load.seconds import (
    LATENCY_PHASE,
    LoadTotals,
    issuing_window,
    load_seconds,
    totals,
)
from chaos.load.seconds import MEASUREMENT as LOAD
from chaos.record.journal import FaultWindow, fault_windows, read_journal
from chaos.record.lineproto import ParseStats, Point, read_points
from chaos.record.rundir import RunFiles

ROLE_ORDER = ("client", "gateway", "proxy", "origin")
SOCKET_MEASUREMENTS = ("tcp_states", "port_budget_summary", "tcp_zombies", "tcp_counters")
XY = list[tuple[float, float]]
RUN_DIR_HINT = "pass a directory written by `chaos run`, e.g. runs/20250101T120000Z-smoke"


@dataclass(frozen=True)
class Fault:
    """One fault window (:class:`~chaos.record.journal.FaultWindow`, the same as the
    expectations'); ``end`` is None when no revert was recorded (the run died), and ``start``
    for an irreversible fault (an instant)."""

    id: str
    kind: str
    target: str
    start: float  # seconds since t0
    end: float | None
    steps: int = 1  # a ramp's steps, one window
    instant: bool = False

    @property
    def label(self) -> str:
        text = f"{self.id}: {self.kind}" if self.id else self.kind
        text = f"{text} → {self.target}" if self.target else text
        return f"{text} ({self.steps} steps)" if self.steps > 1 else text


@dataclass
class LoadSeries:
    """Load over time: connection rate, failures (total and per class), latency percentiles."""

    source: str = ""  # where the series came from, shown under the plots
    rate: XY = field(default_factory=list)  # connections started per second
    completed: XY = field(default_factory=list)  # connections completed per second
    failures: XY = field(default_factory=list)  # failures/s, all classes
    classes: dict[str, XY] = field(default_factory=dict)  # failures/s per error class
    percentiles: dict[str, XY] = field(default_factory=dict)  # "p50" -> ms (whole connection)
    connect_p99: XY = field(default_factory=list)  # ms
    tls_p99: XY = field(default_factory=list)  # ms, TLS handshakes (load.tls)
    window: tuple[float, float] | None = None  # unix seconds: first start to the last one
    totals: LoadTotals | None = None  # connections started, completed, failed in the window
    users: XY = field(default_factory=list)


@dataclass
class RunData:
    path: Path
    run_id: str
    scenario: str
    t0: float  # unix seconds of the run start
    end: float  # seconds since t0 of the last thing seen
    journal: list[dict[str, Any]]
    faults: list[Fault]
    load_window: tuple[float, float] | None  # seconds since t0: users started → load stop
    steps: list[tuple[float, float]]  # a sweep's steps: (start since t0, target/s)
    points: dict[str, list[Point]]  # by measurement
    parse: ParseStats
    summary: dict[str, Any]
    load: LoadSeries
    failures_by_class: dict[str, int]
    namespaces: dict[str, str]  # role -> namespace

    def measurement(self, name: str) -> list[Point]:
        return self.points.get(name, [])

    def seconds(self, point: Point) -> float:
        return (point.time_ns or 0) / 1e9 - self.t0

    def series(
        self,
        measurement: str,
        field_name: str,
        key: Callable[[Point], str | None] | None = None,
        where: Callable[[Point], bool] | None = None,
    ) -> dict[str, XY]:
        """``field_name`` over time, one series per ``key(point)`` (default: the role).

        Points without the field are left out (the schema omits fields that have no value
        rather than writing 0); points whose key is None are skipped.
        """
        key = key or role_of
        out: dict[str, XY] = defaultdict(list)
        for point in self.measurement(measurement):
            if where is not None and not where(point):
                continue
            value = point.fields.get(field_name)
            name = key(point)
            if name is None or not _is_number(value):
                continue
            out[name].append((self.seconds(point), float(value)))  # type: ignore[arg-type]
        return {name: sorted(xy) for name, xy in sorted(out.items(), key=lambda i: role_rank(i[0]))}

    def roles(self) -> list[str]:
        """Namespaces with socket samples (the load and cost points name no new ones)."""
        seen = {role_of(p) for m in SOCKET_MEASUREMENTS for p in self.measurement(m)} - {None}
        return sorted(seen, key=role_rank)  # type: ignore[arg-type]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def role_of(point: Point) -> str | None:
    """The role tag, or the namespace for points of a namespace outside the lab."""
    return point.tags.get("role") or point.tags.get("netns")


def role_rank(name: str) -> tuple[int, str]:
    return (ROLE_ORDER.index(name) if name in ROLE_ORDER else len(ROLE_ORDER), name)


# --- loading -------------------------------------------------------------------------------


def load_run(path: str | Path) -> RunData:
    """Read a run directory; raises SinkError (one line and a fix) when it is not usable."""
    run_path = Path(path)
    if not run_path.is_dir():
        raise SinkError(f"{run_path} is not a directory", RUN_DIR_HINT)
    files = RunFiles(run_path)
    journal_path, samples_path = files.journal_file, files.samples
    if not journal_path.is_file():
        raise SinkError(f"{run_path} is not a run directory (no journal.jsonl)", RUN_DIR_HINT)
    if not samples_path.is_file():
        raise SinkError(
            f"{run_path} has no samples.lp: the run collected no samples",
            "re-run it with a version of `chaos run` that writes samples.lp (collectors on)",
        )
    journal = read_journal(journal_path)
    stats = ParseStats()
    try:
        points = read_points(samples_path, stats)
    except OSError as exc:
        raise SinkError(
            f"cannot read {samples_path}: {exc.strerror}", "check its permissions"
        ) from None
    if not points:
        detail = f" ({stats.bad} bad lines; {stats.first_error})" if stats.bad else ""
        raise SinkError(
            f"{samples_path} holds no samples{detail}",
            "the run ended before its first sample; run it again for longer than one interval",
        )
    by_measurement: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        if point.time_ns is not None:
            by_measurement[point.measurement].append(point)
    summary = _read_json(files.summary)

    stamps = [p.time_ns / 1e9 for pts in by_measurement.values() for p in pts if p.time_ns]
    start = _event(journal, "run.start")
    t0 = float(start["ts"]) if start else min(stamps)
    end_event = _event(journal, "run.end", last=True)
    end = max([*(s - t0 for s in stamps), (float(end_event["ts"]) - t0) if end_event else 0.0])

    run = RunData(
        path=run_path,
        run_id=_run_id(run_path, by_measurement),
        scenario=_scenario(start, by_measurement, run_path),
        t0=t0,
        end=end,
        journal=journal,
        faults=[],
        load_window=_window(journal, "load.start", "load.end", t0),
        steps=_sweep_steps(run_path, t0),
        points=dict(by_measurement),
        parse=stats,
        summary=summary,
        load=LoadSeries(),
        failures_by_class={},
        namespaces=_namespaces(journal, by_measurement),
    )
    run.faults = _faults(fault_windows(journal), t0) or _faults_from_events(run)
    run.load = _load_series(run)
    run.load_window = _load_window(journal, t0, run.load)
    run.failures_by_class = _failures_by_class(run)
    return run


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _event(journal: list[dict[str, Any]], name: str, last: bool = False) -> dict[str, Any] | None:
    matches = [e for e in journal if e.get("event") == name]
    if not matches:
        return None
    return matches[-1] if last else matches[0]


def _window(
    journal: list[dict[str, Any]], start: str, end: str, t0: float
) -> tuple[float, float] | None:
    first, last = _event(journal, start), _event(journal, end, last=True)
    if first is None:
        return None
    stop = float(last["ts"]) if last else float(journal[-1]["ts"])
    return (float(first["ts"]) - t0, stop - t0)


def _load_window(
    journal: list[dict[str, Any]], t0: float, load: LoadSeries
) -> tuple[float, float] | None:
    """The seconds in which the load issued connections (the load series; else the journal's
    ``load.ramp`` or ``load.start`` to ``load.end``): the window of the means in report.json
    and of the "load start"/"load stop" marks, the same as ``expect``'s."""
    window = _window(journal, "load.start", "load.end", t0)
    if window is None:
        return None
    ramp = _event(journal, "load.ramp")
    start = float(ramp["ts"]) - t0 if ramp else window[0]
    if load.window is None:
        return (start, max(window[1], start))
    return (max(start, load.window[0] - t0), load.window[1] - t0)


def _run_id(path: Path, points: dict[str, list[Point]]) -> str:
    for pts in points.values():
        if pts and pts[0].tags.get("run"):
            return pts[0].tags["run"]
    return path.name


def _scenario(start: dict[str, Any] | None, points: dict[str, list[Point]], path: Path) -> str:
    if start and start.get("scenario"):
        return str(start["scenario"])
    for pts in points.values():
        if pts and pts[0].tags.get("scenario"):
            return pts[0].tags["scenario"]
    return path.name.partition("-")[2] or path.name


def _namespaces(journal: list[dict[str, Any]], points: dict[str, list[Point]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for event in journal:
        if event.get("event") == "lab.up.begin" and isinstance(event.get("namespaces"), dict):
            found.update({str(k): str(v) for k, v in event["namespaces"].items()})
    for pts in points.values():
        for point in pts[:64]:  # the first tick names every namespace
            role, netns = point.tags.get("role"), point.tags.get("netns")
            if role and netns:
                found.setdefault(role, netns)
    return dict(sorted(found.items(), key=lambda i: role_rank(i[0])))


# --- faults --------------------------------------------------------------------------------


def _faults(windows: list[FaultWindow], t0: float) -> list[Fault]:
    """The report's bands: one per fault window, from when the first apply was done."""
    return [
        Fault(
            w.id,
            w.kind,
            w.target,
            w.in_effect - t0,
            None if w.reverted is None else max(w.reverted, w.in_effect) - t0,
            steps=w.steps,
            instant=w.instant,
        )
        for w in windows
    ]


def _faults_from_events(run: RunData) -> list[Fault]:
    """The windows of the ``chaos_event`` points the sink wrote (tags and fields of
    ``fault.apply``/``fault.revert``), read as the journal's events would be."""
    events = []
    for point in run.measurement("chaos_event"):
        action = str(point.fields.get("action", point.tags.get("action", "")))
        action = action.removeprefix("fault.")
        if action not in ("apply", "revert"):
            continue
        event: dict[str, Any] = {"event": f"fault.{action}", "ts": run.seconds(point)}
        for name in ("id", "kind", "target", "spec", "window", "reversible"):
            value = point.tags.get(name, point.fields.get(name))
            if value is not None:
                event[name] = value
        events.append(event)
    events.sort(key=lambda e: e["ts"])
    return _faults(fault_windows(events), 0.0)


# --- load ----------------------------------------------------------------------------------

# The whole connection's percentiles are drawn (connect to close), in milliseconds.
_PLOTTED = ("p50", "p90", "p99")


def _load_series(run: RunData) -> LoadSeries:
    seconds = load_seconds(p for m in (LOAD, LOAD_FAILURES) for p in run.measurement(m))
    if not seconds:
        return LoadSeries()
    load = LoadSeries(source="samples.lp (load series, per second, on the run's clock)")
    load.window = issuing_window(seconds)
    load.totals = totals(seconds.values())
    names = sorted({name for row in seconds.values() for name in row.classes})
    for second, row in seconds.items():
        t = second - run.t0  # the start of the second it describes (drawn as a step)
        load.rate.append((t, float(row.started)))
        load.completed.append((t, float(row.completed)))
        load.failures.append((t, float(row.failed)))
        load.users.append((t, float(row.users)))
        for name in names:  # a second without a point of a class had none of it
            load.classes.setdefault(name, []).append((t, float(row.classes.get(name, 0))))
        for name in _PLOTTED:  # a second in which no connection ended has no percentile
            value = row.percentile_us(LATENCY_PHASE, name)
            if value is not None:
                load.percentiles.setdefault(name, []).append((t, value / 1000))
        for phase, xy in (("connect", load.connect_p99), ("tls", load.tls_p99)):
            value = row.percentile_us(phase, "p99")
            if value is not None:
                xy.append((t, value / 1000))
    return load


def _sweep_steps(run_path: Path, t0: float) -> list[tuple[float, float]]:
    data = _read_json(run_path / "sweep.json")
    steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    out = []
    for step in steps:
        if not isinstance(step, dict) or not _is_number(step.get("target")):
            continue
        at = step.get("scheduled") or step.get("start")  # where the schedule switched
        if _is_number(at):
            out.append((float(at) - t0, float(step["target"])))
    return out


def _failures_by_class(run: RunData) -> dict[str, int]:
    """Total failures per class: the per-class series, else summary.json."""
    totals: dict[str, int] = defaultdict(int)
    for error, xy in run.load.classes.items():
        totals[error] += round(sum(v for _, v in xy))
    if totals:
        return dict(totals)
    load = run.summary.get("load", {})
    by_class = load.get("failures_by_class", {}) if isinstance(load, dict) else {}
    return {str(k): int(v) for k, v in by_class.items() if _is_number(v)}
