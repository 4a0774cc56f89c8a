"""From a loaded run to plots and to the JSON summary (``report.json``).

Both come from the same :class:`~chaos.report.data.RunData`, so the numbers in the HTML
header, the terminal and ``report.json`` are the ones the plots draw.

Statistics of a series (``peak``, ``mean``, ``last``): ``peak`` and ``last`` over the whole
run; ``mean`` over the load window (``load.start`` to ``load.end``) when the journal has one,
since the idle seconds of lab set-up and teardown would otherwise dilute it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.collect.kernel import NOTABLE
from chaos.load.seconds import window_latency_us
from chaos.record.rundir import RunFiles
from chaos.record.schema import is_family_total
from chaos.report.data import XY, Fault, RunData, role_of, role_rank
from chaos.report.drift import judge as judge_drift
from chaos.report.svg import PALETTE, Band, Chart, Line, fmt_percent

SCHEMA_VERSION = 1

STATES = (
    "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
    "close_wait", "last_ack", "closing", "close",
)  # fmt: skip
STATE_COLORS = dict(zip(STATES, PALETTE, strict=True))
ROLE_COLORS = {"client": PALETTE[0], "gateway": PALETTE[9], "proxy": PALETTE[3],
               "origin": PALETTE[2]}  # fmt: skip
FAILURE_COLOR = PALETTE[1]
PERCENTILE_COLORS = {"p50": PALETTE[0], "p90": PALETTE[5], "p95": PALETTE[3], "p99": PALETTE[1],
                     "p99.9": PALETTE[4], "p100": PALETTE[7]}  # fmt: skip
# Process memory fields (rss_bytes, vms, memory_mb, ...); kernel buffers (sockstat's
# frag_memory, tcp_mem_pages) are not what a soak run watches.
_MEMORY_FIELD = re.compile(
    r"^(?:\w+_)?(?:rss|vms|uss|pss|memory|mem)(?:_(?:bytes|kb|kib|mb|mib))?$"
)
_NOT_MEMORY = frozenset({"sockstat", "conntrack", "tcp_counters", "tcp_states", "tcp_teardown"})

# Sections of the report, in page order; each holds one or more plots.
SECTIONS = {
    "rate": "Connection rate",
    "errors": "Errors by class",
    "latency": "Latency percentiles",
    "states": "TCP states per namespace",
    "time_wait": "TIME_WAIT",
    "ports": "Port utilisation (port budget)",
    "zombies": "Zombie ESTABLISHED sockets",
    "lab_packets": "Packets the lab counted",
    "sampler": "Sampler cost",
    "memory": "Memory",
}
REQUIRED_SECTIONS = ("rate", "errors", "latency", "states", "time_wait", "ports", "zombies")


@dataclass
class Plot:
    id: str
    section: str
    title: str
    chart: Chart
    note: str = ""
    legend_stats: dict[str, str] = field(default_factory=dict)  # label -> "peak 1.2k"

    @property
    def points(self) -> int:
        return sum(len(line.points) for line in self.chart.lines)


# --- statistics ----------------------------------------------------------------------------


def stats(xy: XY, window: tuple[float, float] | None) -> dict[str, float]:
    if not xy:
        return {}
    inside = [v for t, v in xy if window is None or window[0] <= t <= window[1]] or [
        v for _, v in xy
    ]
    return {
        "peak": _round(max(v for _, v in xy)),
        "mean": _round(sum(inside) / len(inside)),
        "last": _round(xy[-1][1]),
    }


def _round(value: float) -> float:
    # Six significant digits: a peak is the sample's own value, a mean loses float noise.
    return float(f"{value:.6g}")


def _fmt(value: float, unit: str = "") -> str:
    if unit == "%":
        return fmt_percent(value)
    text = f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.2f}"
    return f"{text} {unit}".rstrip()


# --- plots ---------------------------------------------------------------------------------


def _chart(run: RunData, lines: list[Line], y_title: str, **kw: Any) -> Chart:
    marks = [(start, f"{target:g}/s") for start, target in run.steps]  # a sweep's steps
    if run.load_window:
        start, stop = run.load_window
        if marks and abs(marks[0][0] - start) < 1.0:  # the first step starts with the load
            marks[0] = (marks[0][0], f"load start · {marks[0][1]}")
        else:
            marks.insert(0, (start, "load start"))
        marks.append((stop, "load stop"))
    return Chart(
        lines=lines,
        x_range=(0.0, max(run.end, 1.0)),
        y_title=y_title,
        bands=[Band(f.id, f.label, f.start, f.end) for f in run.faults],
        marks=marks,
        **kw,
    )


def _legend(lines: list[Line], window: tuple[float, float] | None, unit: str = "") -> dict:
    out = {}
    for line in lines:
        s = stats(line.points, window)
        if s:
            out[line.label] = f"peak {_fmt(s['peak'], unit)} · mean {_fmt(s['mean'], unit)}"
    return out


def _family_all(point: Any) -> bool:
    return is_family_total(point.tags)


def state_plots(run: RunData) -> list[Plot]:
    plots = []
    per_state = {s: run.series("tcp_states", s, where=_family_all) for s in STATES}
    for role in run.roles():
        lines = []
        for state in STATES:
            xy = per_state[state].get(role, [])
            # A state never seen in this namespace would only add a flat line at 0.
            if xy and (state == "established" or any(v for _, v in xy)):
                lines.append(Line(state.upper(), xy, STATE_COLORS[state]))
        netns = run.namespaces.get(role, "")
        plots.append(
            Plot(
                id=f"states-{role}",
                section="states",
                title=f"{role}" + (f" — {netns}" if netns and netns != role else ""),
                # Half width: the page shows the namespaces two by two.
                chart=_chart(
                    run, lines, "sockets", empty_text="no tcp_states samples", width=640, height=270
                ),
                note="LISTEN left out; states that stayed at 0 are not drawn",
                legend_stats=_legend(lines, run.load_window),
            )
        )
    return plots


def _role_lines(series: dict[str, XY], dash: str | None = None, suffix: str = "") -> list[Line]:
    return [
        Line(role + suffix, xy, ROLE_COLORS.get(role, PALETTE[(i + 4) % len(PALETTE)]), dash)
        for i, (role, xy) in enumerate(series.items())
    ]


def time_wait_plot(run: RunData) -> Plot:
    lines = _role_lines(run.series("tcp_states", "time_wait", where=_family_all))
    return Plot(
        "time_wait",
        "time_wait",
        "TIME_WAIT sockets per role",
        _chart(run, lines, "sockets in TIME_WAIT", empty_text="no tcp_states samples"),
        note="tcp_states.time_wait (the active closer of each connection holds it ~60 s)",
        legend_stats=_legend(lines, run.load_window),
    )


def port_plot(run: RunData) -> Plot:
    series = run.series("port_budget_summary", "max_utilisation")
    busy = {role: xy for role, xy in series.items() if any(v for _, v in xy)}
    idle = sorted(set(series) - set(busy), key=role_rank)
    lines = _role_lines(busy)
    note = "busiest (source, destination, port) group of each role: used / capacity"
    if idle:
        note += f"; no outbound ports used by: {', '.join(idle)}"
    return Plot(
        "ports",
        "ports",
        "Port utilisation of the busiest group",
        _chart(
            run,
            lines,
            "utilisation",
            y_format=fmt_percent,
            y_max=1.0,
            empty_text="no outbound port use" if series else "no port_budget samples",
        ),
        note=note,
        legend_stats=_legend(lines, run.load_window, "%"),
    )


def zombie_plot(run: RunData) -> Plot:
    candidates = run.series("tcp_zombies", "candidates")
    lines = _role_lines(candidates, suffix=" candidates")
    lines += _role_lines(run.series("tcp_zombies", "confirmed"), dash="6 3", suffix=" confirmed")
    thresholds = {p.fields.get("threshold_s") for p in run.measurement("tcp_zombies")}
    thresholds.discard(None)
    note = "ESTABLISHED, no keepalive timer, silent for at least "
    note += ", ".join(f"{t:g} s" for t in sorted(thresholds)) if thresholds else "the threshold"  # type: ignore[arg-type]
    return Plot(
        "zombies",
        "zombies",
        "Zombie candidates (solid) and confirmed zombies (dashed)",
        _chart(run, lines, "sockets", empty_text="no tcp_zombies samples"),
        note=note,
        legend_stats=_legend(lines, run.load_window),
    )


def lab_packets_plot(run: RunData) -> Plot | None:
    """Escapes at the origin and resets toward the clients (the lab's nftables counters);
    None for runs without them (an external proxy's lab has no gateway, older runs none)."""
    lines = _role_lines(run.series("lab_escapes", "packets_delta"), suffix=" escapes")
    lines += _role_lines(run.series("lab_resets", "packets_delta"), dash="6 3", suffix=" resets")
    if not lines:
        return None
    return Plot(
        "lab_packets",
        "lab_packets",
        "Packets that bypassed the proxy, and resets toward the clients, per sample",
        _chart(run, lines, "packets per sample"),
        note=(
            "lab_escapes: packets reaching the origin from the clients' own addresses; "
            "lab_resets: TCP resets the gateway forwarded to the clients"
        ),
        legend_stats=_legend(lines, run.load_window),
    )


def rate_plot(run: RunData) -> Plot:
    load = run.load
    lines = [
        Line("started/s", load.rate, PALETTE[0], width=2.2, step=1.0),
        Line("completed/s", load.completed, PALETTE[2], dash="5 3", step=1.0),
        Line("failures/s", load.failures, FAILURE_COLOR, step=1.0),
    ]
    lines = [line for line in lines if line.points]
    note = "connections begun, ended well and failed in each second (a step per second)"
    return Plot(
        "rate",
        "rate",
        "New connections per second",
        _chart(run, lines, "connections per second", empty_text="no load series"),
        note=note + (f"; source: {load.source}" if load.source else ""),
        legend_stats=_legend(lines, run.load_window),
    )


def errors_plot(run: RunData) -> Plot:
    classes = run.load.classes
    totals = run.failures_by_class
    total_text = "totals: " + (
        ", ".join(f"{k} {v:,}" for k, v in sorted(totals.items(), key=lambda i: -i[1])) or "none"
    )
    if classes:
        ordered = sorted(classes, key=lambda c: -totals.get(c, 0))
        lines = [
            Line(name, classes[name], PALETTE[(i + 1) % len(PALETTE)], step=1.0)
            for i, name in enumerate(ordered)
        ]
        note = "failures per second by class; " + total_text
    else:  # a run without the load series: summary.json's per-class totals only
        lines = []
        note = "per-class split over time not recorded; " + total_text
    return Plot(
        "errors",
        "errors",
        "Failures by error class",
        _chart(run, lines, "failures per second", empty_text="no failures"),
        note=note,
        legend_stats=_legend(lines, run.load_window),
    )


def latency_plot(run: RunData) -> Plot:
    lines = [
        Line(label, xy, PERCENTILE_COLORS.get(label, PALETTE[(i + 5) % len(PALETTE)]), step=1.0)
        for i, (label, xy) in enumerate(run.load.percentiles.items())
    ]
    if run.load.connect_p99:
        lines.append(Line("connect p99", run.load.connect_p99, PALETTE[4], "5 3", step=1.0))
    if run.load.tls_p99:
        lines.append(Line("TLS handshake p99", run.load.tls_p99, PALETTE[6], "2 2", step=1.0))
    return Plot(
        "latency",
        "latency",
        "Connection latency percentiles",
        _chart(run, lines, "milliseconds", empty_text="no latency in the load series"),
        note="whole connection (connect start to close done) of the connections that ended in "
        "each second, from the workers' microsecond histograms (a gap: none ended); dashed: "
        "the connect phase's p99 (dotted: the TLS handshake's, with TLS)",
        legend_stats=_legend(lines, run.load_window, "ms"),
    )


def _is_sampler(point: Any) -> bool:
    return point.tags.get("collector") == "sampler"


def sampler_plots(run: RunData) -> list[Plot]:
    whole = lambda p: "tick" if _is_sampler(p) else None  # noqa: E731 - a key function
    tick_ms = run.series("collector_cost", "duration_ms", key=whole).get("tick", [])
    tick_cpu = run.series("collector_cost", "cpu_ms", key=whole).get("tick", [])
    lines = [
        Line("tick wall time", tick_ms, PALETTE[0]),
        Line("tick CPU time", tick_cpu, PALETTE[3], dash="5 3"),
    ]
    lines = [line for line in lines if line.points]
    interval = {p.fields.get("interval_s") for p in run.measurement("collector_cost")}
    interval.discard(None)
    plots = [
        Plot(
            "sampler",
            "sampler",
            "Cost of one sampling tick (all collectors, all namespaces)",
            _chart(run, lines, "milliseconds", empty_text="no collector_cost samples"),
            note="interval " + ", ".join(f"{i:g} s" for i in interval) if interval else "",  # type: ignore[arg-type]
            legend_stats=_legend(lines, run.load_window, "ms"),
        )
    ]
    memory = memory_series(run)
    if memory:
        lines = [
            Line(label, xy, PALETTE[i % len(PALETTE)])
            for i, (label, xy) in enumerate(memory.items())
        ]
        plots.append(
            Plot(
                "memory",
                "memory",
                "Memory",
                _chart(run, lines, "MiB"),
                note="flat lines are what a soak run should show",
                legend_stats=_legend(lines, run.load_window, "MiB"),
            )
        )
    return plots


def memory_series(run: RunData) -> dict[str, XY]:
    """Memory fields of any measurement (rss, vms, memory...), in MiB.

    No collector writes memory yet; whichever does (a soak-run process sampler) is picked up
    by field name. ``_bytes``/``_kb``/``_kib`` suffixes are converted; bare numbers are bytes.
    """
    out: dict[str, XY] = {}
    for measurement, points in run.points.items():
        if measurement in _NOT_MEMORY:
            continue
        for point in points:
            for key, value in point.fields.items():
                if not _MEMORY_FIELD.search(key) or not isinstance(value, int | float):
                    continue
                if isinstance(value, bool):
                    continue
                scale = 1 / 1024 if key.endswith(("_kb", "_kib")) else 1 / 1048576
                if key.endswith(("_mb", "_mib")):
                    scale = 1.0
                who = point.tags.get("process") or point.tags.get("role") or ""
                label = f"{measurement}.{key}" + (f" ({who})" if who else "")
                out.setdefault(label, []).append((run.seconds(point), value * scale))  # type: ignore[attr-defined]
    return {label: sorted(xy) for label, xy in out.items() if any(v for _, v in xy)}


def make_plots(run: RunData) -> list[Plot]:
    return [
        rate_plot(run),
        errors_plot(run),
        latency_plot(run),
        *state_plots(run),
        time_wait_plot(run),
        port_plot(run),
        zombie_plot(run),
        *[plot for plot in [lab_packets_plot(run)] if plot is not None],
        *sampler_plots(run),
    ]


# --- the JSON summary ----------------------------------------------------------------------


def verdict(run: RunData) -> tuple[str, list[dict[str, Any]]]:
    expectations = run.summary.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        return "no expectations", []
    results = [e for e in expectations if isinstance(e, dict)]
    return ("PASS" if all(e.get("passed") is True for e in results) else "FAIL"), results


def counter_totals(run: RunData) -> dict[str, dict[str, int]]:
    """Sums of the notable kernel counters per role (tcp_counters holds increases)."""
    wanted = {tuple(name.split(".", 1)) for name in NOTABLE}
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for point in run.measurement("tcp_counters"):
        role, group = role_of(point), point.tags.get("group", "")
        if role is None:
            continue
        for key, value in point.fields.items():
            if (group, key) in wanted and isinstance(value, int | float):
                totals[role][key] += int(value)
    return {
        role: dict(sorted(values.items()))
        for role, values in sorted(totals.items(), key=lambda i: role_rank(i[0]))
    }


def port_groups(run: RunData, top: int = 5) -> list[dict[str, Any]]:
    """The busiest (source, destination, port) groups by peak ports used."""
    peaks: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for point in run.measurement("port_budget"):
        tags = point.tags
        key = (
            role_of(point) or "",
            tags.get("src", ""),
            tags.get("dst", ""),
            tags.get("dport", ""),
        )
        used = point.fields.get("used")
        if not isinstance(used, int | float):
            continue
        entry = peaks.setdefault(
            key,
            {"role": key[0], "src": key[1], "dst": key[2], "dport": key[3], "peak_used": 0,
             "capacity": point.fields.get("capacity"), "first_full_s": None},
        )  # fmt: skip
        entry["peak_used"] = max(entry["peak_used"], int(used))
        if entry["first_full_s"] is None and point.fields.get("utilisation", 0) >= 1.0:  # type: ignore[operator]
            entry["first_full_s"] = round(run.seconds(point), 1)
    ranked = sorted(peaks.values(), key=lambda e: -e["peak_used"])
    return ranked[:top]


def _fault_json(fault: Fault) -> dict[str, Any]:
    return {
        "id": fault.id,
        "kind": fault.kind,
        "target": fault.target,
        "start_s": round(fault.start, 3),
        "end_s": None if fault.end is None else round(fault.end, 3),
        "reverted": fault.end is not None and not fault.instant,
        "instant": fault.instant,  # irreversible (kill): nothing to revert
        "steps": fault.steps,  # a ramp's steps, one window
    }


def load_summary(run: RunData) -> dict[str, Any]:
    """Totals of the load series and its latency over the load's window (merged histograms,
    microseconds), with the per-second series' peaks and means beside them."""
    load = run.load
    out: dict[str, Any] = {}
    if load.window is not None and load.totals is not None:
        start, end = load.window
        out["window_s"] = [round(start - run.t0, 3), round(end - run.t0, 3)]
        out["connections"] = load.totals.started
        out["completed"] = load.totals.completed
        out["failures"] = load.totals.failed
        out["achieved_rate"] = round(load.totals.started / max(end - start, 1.0), 2)
        out["latency_us"] = window_latency_us(run.path, start, end)
        out.update({k: v for k, v in out["latency_us"].items() if k != "count"})
    out["failures_by_class"] = dict(sorted(run.failures_by_class.items(), key=lambda i: -i[1]))
    out["rate"] = stats(run.load.rate, run.load_window)
    out["failures_per_s"] = stats(run.load.failures, run.load_window)
    out["latency_ms_per_second"] = {
        k: stats(v, run.load_window) for k, v in run.load.percentiles.items()
    }
    out["source"] = run.load.source
    return out


def roles_summary(run: RunData) -> dict[str, Any]:
    window = run.load_window
    out: dict[str, Any] = {}
    per_state = {s: run.series("tcp_states", s, where=_family_all) for s in STATES}
    util = run.series("port_budget_summary", "max_utilisation")
    used = run.series("port_budget_summary", "max_used")
    outbound = run.series("port_budget_summary", "outbound")
    zombies = run.series("tcp_zombies", "candidates")
    confirmed = run.series("tcp_zombies", "confirmed")
    orphans = run.series("tcp_teardown", "orphans")
    conntrack = run.series("conntrack", "entries")
    counters = counter_totals(run)
    for role in run.roles():
        entry: dict[str, Any] = {"netns": run.namespaces.get(role, role)}
        entry["states"] = {
            s: stats(per_state[s][role], window) for s in STATES if per_state[s].get(role)
        }
        for key, series in (
            ("port_utilisation", util),
            ("port_max_used", used),
            ("ports_outbound", outbound),
            ("zombie_candidates", zombies),
            ("zombies_confirmed", confirmed),
            ("orphans", orphans),
            ("conntrack_entries", conntrack),
        ):
            if role in series:
                entry[key] = stats(series[role], window)
        entry["counters"] = counters.get(role, {})
        out[role] = entry
    return out


def sampler_summary(run: RunData) -> dict[str, Any]:
    ticks = [p for p in run.measurement("collector_cost") if _is_sampler(p)]
    if not ticks:
        return {}

    def values(name: str, points: list[Any]) -> list[float]:
        return [
            float(p.fields[name]) for p in points if isinstance(p.fields.get(name), int | float)
        ]

    def spread(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {}
        ordered = sorted(xs)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return {"mean": _round(sum(xs) / len(xs)), "p99": _round(p99), "max": _round(max(xs))}

    per_collector: dict[str, list[float]] = defaultdict(list)
    for point in run.measurement("collector_cost"):
        name = point.tags.get("collector", "")
        if name and name != "sampler" and isinstance(point.fields.get("duration_ms"), int | float):
            per_collector[name].append(float(point.fields["duration_ms"]))  # type: ignore[arg-type]
    return {
        "ticks": len(ticks),
        "tick_ms": spread(values("duration_ms", ticks)),
        "tick_cpu_ms": spread(values("cpu_ms", ticks)),
        "skipped_ticks": int(sum(values("skipped_ticks", ticks))),
        "dropped": int(max(values("dropped", ticks), default=0)),
        "errors": int(sum(values("errors", run.measurement("collector_cost")))),
        "collectors_ms": {k: spread(v) for k, v in sorted(per_collector.items())},
    }


def sweep_summary(run_path: Path) -> dict[str, Any] | None:
    """A capacity sweep's steps and verdict (``sweep.json``, written by ``chaos sweep``)."""
    try:
        data = json.loads(RunFiles(run_path).sweep.read_text())
    except (OSError, ValueError):
        return None
    keep = ("target", "start", "scheduled", "achieved", "failures", "classes", "p99_us",
            "ports", "proxy_cpu", "origin_cpu", "generator_cpu", "host_idle", "host_steal",
            "controller_cpu", "saturated", "exhausted", "signature", "passed", "why")  # fmt: skip
    return {
        "knee": data.get("knee"),
        "lower_bound": data.get("lower_bound", False),
        "verdict": data.get("verdict", ""),
        "first_exhausted": data.get("first_exhausted"),
        "evidence": data.get("evidence", ""),
        "steps": [{k: step.get(k) for k in keep} for step in data.get("steps", [])],
        "not_run": data.get("not_run") or [],
        "stopped_early": data.get("stopped_early"),
    }


def summarise(run: RunData, plots: list[Plot]) -> dict[str, Any]:
    result, expectations = verdict(run)
    memory = memory_series(run)
    return {
        "schema": SCHEMA_VERSION,
        "run_dir": str(run.path),
        "run": run.run_id,
        "scenario": run.scenario,
        "start_unix": round(run.t0, 3),
        "duration_s": round(run.end, 3),
        "load_window_s": [round(t, 3) for t in run.load_window] if run.load_window else None,
        "verdict": result,
        "expectations": expectations,
        "drift": judge_drift(run).as_dict(),
        "faults": [_fault_json(f) for f in run.faults],
        "sweep": sweep_summary(run.path),
        "load": load_summary(run),
        "roles": roles_summary(run),
        "port_groups": port_groups(run),
        "sampler": sampler_summary(run),
        "memory_mib": {label: stats(xy, None) for label, xy in memory.items()},
        "samples": {
            "points": run.parse.points,
            "bad_lines": run.parse.bad,
            "first_error": run.parse.first_error,
            "measurements": {name: len(pts) for name, pts in sorted(run.points.items())},
        },
        "plots": {
            plot.id: {
                "section": plot.section,
                "series": len(plot.chart.lines),
                "points": plot.points,
            }
            for plot in plots
        },
    }
