"""Load a run directory into what the report plots and summarises.

Sources, each optional except the journal and ``samples.lp`` (a run directory without both is
not one the report can say anything about):

* ``journal.jsonl``: run and load start/end, fault windows (``fault.apply``/``fault.revert``).
* ``samples.lp``: every collected point (docs/metrics.md), read with
  :func:`chaos.record.lineproto.read_points`. Fault windows fall back to its ``chaos_event``
  points when the journal has none.
* Load over time: the ``locust`` measurement when the run wrote one, else Locust's own CSVs
  (``locust/locust_stats_history.csv``, ``locust/rate.csv``).
* Failures by class over time: the ``locust_failures`` measurement, else our locustfiles'
  ``locust/failures_per_second.csv``; with neither, only per-class totals, from
  ``locust/locust_failures.csv``.
* ``summary.json``: totals of the load and expectation results, when ``chaos run`` wrote it.

Times are kept as seconds since the run started (``t0``): every plot shares that x axis.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.errors import SinkError
from chaos.load.runner import FAILURES_CSV
from chaos.record.lineproto import ParseStats, Point, read_points

ROLE_ORDER = ("client", "gateway", "proxy", "origin")
SOCKET_MEASUREMENTS = ("tcp_states", "port_budget_summary", "tcp_zombies", "tcp_counters")
XY = list[tuple[float, float]]
RUN_DIR_HINT = "pass a directory written by `chaos run`, e.g. runs/20250101T120000Z-smoke"


@dataclass(frozen=True)
class Fault:
    """One fault window; ``end`` is None when no revert was recorded (the run died)."""

    id: str
    kind: str
    target: str
    start: float  # seconds since t0
    end: float | None

    @property
    def label(self) -> str:
        text = f"{self.id}: {self.kind}" if self.id else self.kind
        return f"{text} → {self.target}" if self.target else text


@dataclass
class LoadSeries:
    """Load over time: connection rate, failures (total and per class), latency percentiles."""

    source: str = ""  # where the series came from, shown under the plots
    rate: XY = field(default_factory=list)  # achieved connections/s
    target: XY = field(default_factory=list)  # target connections/s (paced runs)
    failures: XY = field(default_factory=list)  # failures/s, all classes
    classes: dict[str, XY] = field(default_factory=dict)  # failures/s per error class
    percentiles: dict[str, XY] = field(default_factory=dict)  # "p50" -> ms
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
    load_window: tuple[float, float] | None  # seconds since t0
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
        """Namespaces with socket samples (the locust and cost points name no new ones)."""
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
    journal_path, samples_path = run_path / "journal.jsonl", run_path / "samples.lp"
    if not journal_path.is_file():
        raise SinkError(f"{run_path} is not a run directory (no journal.jsonl)", RUN_DIR_HINT)
    if not samples_path.is_file():
        raise SinkError(
            f"{run_path} has no samples.lp: the run collected no samples",
            "re-run it with a version of `chaos run` that writes samples.lp (collectors on)",
        )
    journal = _read_journal(journal_path)
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
    summary = _read_json(run_path / "summary.json")

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
        points=dict(by_measurement),
        parse=stats,
        summary=summary,
        load=LoadSeries(),
        failures_by_class={},
        namespaces=_namespaces(journal, by_measurement),
    )
    run.faults = _faults_from_journal(journal, t0) or _faults_from_events(run)
    run.load = _load_from_samples(run) or _load_from_csv(run)
    run.load.classes = _classes_over_time(run) or run.load.classes
    run.failures_by_class = _failures_by_class(run)
    return run


def _read_journal(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if isinstance(record, dict) and _is_number(record.get("ts")):
            events.append(record)
    return events


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


def _pair_faults(records: Iterable[tuple[str, str, str, str, float]], end: float) -> list[Fault]:
    """Pair (action, id, kind, target, seconds) records into windows, in apply order.

    A revert closes the open apply of the same id (or, without ids, the oldest open one of the
    same kind and target); an apply never reverted lasts to the end, marked open.
    """
    open_: list[list[Any]] = []
    done: list[tuple[float, Fault]] = []
    for action, fid, kind, target, at in sorted(records, key=lambda r: r[4]):
        if action == "apply":
            open_.append([fid, kind, target, at])
            continue
        for index, (oid, okind, otarget, ostart) in enumerate(open_):
            if (fid and oid == fid) or (not fid and (okind, otarget) == (kind, target)):
                done.append((ostart, Fault(oid, okind, otarget, ostart, at)))
                del open_[index]
                break
    done += [(start, Fault(fid, kind, target, start, None)) for fid, kind, target, start in open_]
    del end  # open windows are drawn to the plot's right edge
    return [fault for _, fault in sorted(done, key=lambda item: item[0])]


def _faults_from_journal(journal: list[dict[str, Any]], t0: float) -> list[Fault]:
    records = [
        (
            str(e["event"]).removeprefix("fault."),
            str(e.get("id", "")),
            str(e.get("kind", e.get("type", ""))),
            str(e.get("target", "")),
            float(e["ts"]) - t0,
        )
        for e in journal
        if e.get("event") in ("fault.apply", "fault.revert")
    ]
    return _pair_faults(records, 0.0)


def _faults_from_events(run: RunData) -> list[Fault]:
    records = []
    for point in run.measurement("chaos_event"):
        action = str(point.fields.get("action", point.tags.get("action", "")))
        action = action.removeprefix("fault.")
        if action not in ("apply", "revert"):
            continue
        tags = point.tags
        records.append(
            (
                action,
                tags.get("id", str(point.fields.get("id", ""))),
                tags.get("kind", str(point.fields.get("kind", ""))),
                tags.get("target", str(point.fields.get("target", ""))),
                run.seconds(point),
            )
        )
    return _pair_faults(records, run.end)


# --- load ----------------------------------------------------------------------------------

# The `locust` measurement's field names are matched loosely: several spellings are accepted so
# that the report does not break when the writer settles on one.
_RATE_FIELDS = ("achieved_rate", "rate", "rps", "requests_per_s", "current_rps", "reqs_per_s")
_TARGET_FIELDS = ("target_rate", "target_per_s")
# Not "failures" or "requests": the locust measurement has those as running totals.
_FAIL_FIELDS = ("failures_per_s", "fails_per_s", "fail_per_s", "current_fail_per_s")
_USER_FIELDS = ("users", "user_count")
_PCT = re.compile(r"^(?:p|pct_?|percentile_?|response_time_p|latency_p)(\d+(?:[._]\d+)?)(?:_ms)?$")
_CLASS = re.compile(r"^(?:failures?|fails?|errors?)_(?!per_s$)([A-Za-z][A-Za-z0-9]*)(?:_per_s)?$")
_ENTRY_PREFERENCE = ("connection", "Aggregated", "")


def _first_field(fields: dict[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = fields.get(name)
        if _is_number(value):
            return float(value)
    return None


def _pct_label(digits: str) -> str:
    return "p" + digits.replace("_", ".")


def _load_from_samples(run: RunData) -> LoadSeries | None:
    points = run.measurement("locust")
    if not points:
        return None
    # One entry only (connection attempts if tagged by entry name), so rates are not summed
    # over connect/first_byte/... rows.
    names = {p.tags.get("name", p.tags.get("entry", "")) for p in points}
    chosen = next((n for n in _ENTRY_PREFERENCE if n in names), sorted(names)[0])
    load = LoadSeries(source="samples.lp (locust measurement)")
    totals: dict[str, XY] = defaultdict(list)  # running totals: requests, failures
    classes: dict[str, XY] = defaultdict(list)
    percentiles: dict[str, XY] = defaultdict(list)
    for point in sorted(points, key=lambda p: p.time_ns or 0):
        name = point.tags.get("name", point.tags.get("entry", ""))
        error = point.tags.get("error") or point.tags.get("class")
        t = run.seconds(point)
        if error:  # one point per error class and second
            value = _first_field(point.fields, (*_FAIL_FIELDS, "count", "occurrences"))
            if value is not None:
                classes[error].append((t, value))
            continue
        if name != chosen:
            continue
        for target, names_ in (
            (load.rate, _RATE_FIELDS),
            (load.target, _TARGET_FIELDS),
            (load.failures, _FAIL_FIELDS),
            (load.users, _USER_FIELDS),
        ):
            value = _first_field(point.fields, names_)
            if value is not None:
                target.append((t, value))
        for key, value in point.fields.items():
            if not _is_number(value):
                continue
            if key in ("requests", "failures"):
                totals[key].append((t, float(value)))
            elif match := _PCT.match(key):
                percentiles[_pct_label(match.group(1))].append((t, float(value)))
            elif (match := _CLASS.match(key)) and key not in _FAIL_FIELDS:
                classes[match.group(1)].append((t, float(value)))
    load.classes = dict(classes)
    load.percentiles = _plotted_percentiles(percentiles)
    if totals.get("requests"):
        load.rate = rate_of_total(totals["requests"])
        load.failures = rate_of_total(totals.get("failures", [])) or load.failures
    return load


def rate_of_total(total: XY) -> XY:
    """Per-second rate from a running total that moves in steps.

    Locust's own Requests/s is a 10 s window that lags, and reads 0 for most of a short
    run. The running total is exact but moves only when workers report (every 3 s on a
    master): each step is spread evenly over the seconds since the previous step.
    """
    if not total:
        return []
    last_t, last_v = total[0]
    out: XY = [(last_t, 0.0)]
    pending: list[float] = []
    for t, v in total[1:]:
        pending.append(t)
        if v == last_v:
            continue
        rate = max(v - last_v, 0.0) / ((t - last_t) or 1.0)
        out += [(at, rate) for at in pending]
        pending, last_t, last_v = [], t, v
    return out + [(at, 0.0) for at in pending]  # nothing reported since the last step


_PLOTTED = ("p50", "p90", "p95", "p99", "p99.9")


def _plotted_percentiles(found: dict[str, XY]) -> dict[str, XY]:
    """The usual few of Locust's eleven percentiles (all of them when none of those)."""
    chosen = {k: v for k, v in found.items() if k in _PLOTTED} or found
    return dict(sorted(chosen.items(), key=lambda i: float(i[0][1:])))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []


def _num(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _load_from_csv(run: RunData) -> LoadSeries:
    load = LoadSeries()
    history = _csv_rows(run.path / "locust" / "locust_stats_history.csv")
    names = {row.get("Name", "") for row in history}
    entry = next((n for n in _ENTRY_PREFERENCE if n in names), None)
    rows = [r for r in history if r.get("Name") == entry]
    if rows:
        load.source = f"locust/locust_stats_history.csv ({entry!r} entry)"
    percentiles: dict[str, XY] = defaultdict(list)
    csv_totals: dict[str, XY] = defaultdict(list)
    for row in rows:
        stamp = _num(row.get("Timestamp"))
        if stamp is None:
            continue
        t = stamp - run.t0
        for target, column in ((load.rate, "Requests/s"), (load.failures, "Failures/s")):
            if (value := _num(row.get(column))) is not None:
                target.append((t, value))
        if (users := _num(row.get("User Count"))) is not None:
            load.users.append((t, users))
        for key, column in (
            ("requests", "Total Request Count"),
            ("failures", "Total Failure Count"),
        ):
            if (value := _num(row.get(column))) is not None:
                csv_totals[key].append((t, value))
        for column in ("50%", "95%", "99%"):
            if (value := _num(row.get(column))) is not None:  # "N/A" before the first request
                percentiles["p" + column.rstrip("%")].append((t, value))
    load.percentiles = dict(percentiles)
    if csv_totals.get("requests"):
        load.rate = rate_of_total(csv_totals["requests"])
        load.failures = rate_of_total(csv_totals.get("failures", [])) or load.failures
    # Our locustfiles' rate.csv buckets requests by the second they happened (Locust's own
    # Requests/s is a smoothed window that moves in 3 s steps on a master): prefer it.
    rate_rows = _csv_rows(run.path / "locust" / "rate.csv")
    if rate_rows:
        load.source = "locust/rate.csv" + (f" and {load.source}" if load.source else "")
        load.rate, load.target, load.failures = [], [], []
        for row in rate_rows:
            stamp = _num(row.get("time"))
            if stamp is None:
                continue
            t = stamp - run.t0
            for target, column in (
                (load.rate, "achieved_rate"),
                (load.target, "target_rate"),
                (load.failures, "failures"),
            ):
                if (value := _num(row.get(column))) is not None:
                    target.append((t, value))
        if not any(v for _, v in load.target):
            load.target = []
    return load


def _classes_over_time(run: RunData) -> dict[str, XY]:
    """Failures per second per error class: the ``locust_failures`` points (field ``count``),
    else the CSV the collector tails. Summed per class and second, in case several series
    (e.g. two load namespaces) name the same class."""
    by_class: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for point in run.measurement("locust_failures"):
        name, count = point.tags.get("class"), point.fields.get("count")
        if name and _is_number(count):
            by_class[name][run.seconds(point)] += float(count)  # type: ignore[arg-type]
    if not by_class:
        for row in _csv_rows(run.path / "locust" / FAILURES_CSV):
            stamp, count, name = _num(row.get("time")), _num(row.get("count")), row.get("class")
            if name and stamp is not None and count is not None:
                by_class[name][stamp - run.t0] += count
    return {name: sorted(xy.items()) for name, xy in by_class.items()}


def _failures_by_class(run: RunData) -> dict[str, int]:
    """Total failures per class: the per-class series if any, else Locust's failures CSV,
    else summary.json."""
    totals: dict[str, int] = defaultdict(int)
    for error, xy in run.load.classes.items():
        totals[error] += round(sum(v for _, v in xy))
    if totals:
        return dict(totals)
    for row in _csv_rows(run.path / "locust" / "locust_failures.csv"):
        error = row.get("Error", "")
        occurrences = _num(row.get("Occurrences"))
        if error and occurrences:
            totals[error] += int(occurrences)
    if totals:
        return dict(totals)
    load = run.summary.get("load", {})
    by_class = load.get("failures_by_class", {}) if isinstance(load, dict) else {}
    return {str(k): int(v) for k, v in by_class.items() if _is_number(v)}
