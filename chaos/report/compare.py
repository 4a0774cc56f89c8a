"""``chaos compare RUN_A RUN_B``: two runs' signatures side by side.

A *signature* is the flat list of numbers that characterise a run (from the same summary as
``report.json``): load totals and latency, failures per class, per role and state the peak
and mean, port utilisation, zombies, orphans, conntrack, kernel counters of note, sampler
cost, and every expectation's verdict. Rows that are zero or absent in both runs are left
out, so what remains is what either run did. Typical use: the same scenario against two
proxy builds, or a pathology beside its mitigation.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chaos.errors import SinkError
from chaos.record.schema import is_family_total
from chaos.report import Report, analyse
from chaos.report.build import ROLE_COLORS, STATES, _legend
from chaos.report.data import XY, RunData
from chaos.report.html import CSS
from chaos.report.svg import BAND_EDGE, PALETTE, Band, Chart, Line, fmt_percent, render

Value = float | str | None
SIGNIFICANT = 0.2  # a relative change above this is highlighted


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    a: Value
    b: Value

    @property
    def numeric(self) -> bool:
        """Both numbers, or a number against nothing (an error class only one run had)."""
        kinds = {type(v) for v in (self.a, self.b)} - {type(None)}
        return bool(kinds) and kinds <= {int, float}

    @property
    def delta(self) -> float | None:
        if not self.numeric:
            return None
        return float(self.b or 0) - float(self.a or 0)

    @property
    def relative(self) -> float | None:
        delta = self.delta
        if delta is None:
            return None
        base = abs(float(self.a or 0))
        return delta / base if base else (None if delta == 0 else float("inf"))

    @property
    def significant(self) -> bool:
        if self.delta is None:
            return self.a != self.b
        rel = self.relative
        return rel is not None and abs(rel) > SIGNIFICANT


def signature(summary: dict[str, Any]) -> dict[tuple[str, str], Value]:
    """(section, name) -> value for one run."""
    sig: dict[tuple[str, str], Value] = {("run", "verdict"): summary["verdict"]}
    sig[("run", "duration s")] = summary["duration_s"]
    sig[("run", "faults")] = len(summary["faults"])
    load = summary["load"]
    for key, name in (
        ("connections", "connections"),
        ("achieved_rate", "achieved rate /s"),
        ("failures", "failures"),
        ("p50_us", "p50 µs"),
        ("p99_us", "p99 µs"),
        ("max_us", "max µs"),
    ):
        if key in load:
            sig[("load", name)] = load[key]
    if load.get("rate"):
        sig[("load", "started/s peak")] = load["rate"]["peak"]
    if load.get("failures_per_s"):
        sig[("load", "failures/s peak")] = load["failures_per_s"]["peak"]
    for error, count in load["failures_by_class"].items():
        sig[("errors", error)] = count
    for role, entry in summary["roles"].items():
        for state in STATES:
            if state in entry["states"]:
                s = entry["states"][state]
                sig[(role, f"{state.upper()} peak")] = s["peak"]
                sig[(role, f"{state.upper()} mean")] = s["mean"]
        for key, name in (
            ("port_utilisation", "port utilisation"),
            ("zombie_candidates", "zombie candidates"),
            ("zombies_confirmed", "zombies confirmed"),
            ("orphans", "orphans"),
            ("conntrack_entries", "conntrack entries"),
        ):
            if key in entry:
                sig[(role, f"{name} peak")] = entry[key]["peak"]
        for counter, total in entry["counters"].items():
            sig[(role, counter)] = total
    sampler = summary.get("sampler") or {}
    if sampler.get("tick_ms"):
        sig[("sampler", "tick ms mean")] = sampler["tick_ms"]["mean"]
        sig[("sampler", "tick ms max")] = sampler["tick_ms"]["max"]
        sig[("sampler", "skipped ticks")] = sampler["skipped_ticks"]
    for e in summary["expectations"]:
        name = f"{e.get('metric')} {e.get('op')} {e.get('value')} ({e.get('when')}"
        name += f", {e.get('role')})" if e.get("role") else ")"
        sig[("expectations", name)] = "pass" if e.get("passed") else "FAIL"
    return sig


def _empty(value: Value) -> bool:
    return value is None or value == 0


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    sig_a, sig_b = signature(a), signature(b)
    keys = list(sig_a) + [k for k in sig_b if k not in sig_a]
    # Sections in signature order (run, load, errors, roles, sampler, expectations) even
    # when only B has a section: by first appearance in A's keys, then B's.
    canonical = ["run", "load", "errors", *a["roles"], *b["roles"], "sampler", "expectations"]
    section_order = {s: i for i, s in enumerate(dict.fromkeys(canonical))}
    rows = [Row(k[0], k[1], sig_a.get(k), sig_b.get(k)) for k in keys]
    rows = [r for r in rows if not (_empty(r.a) and _empty(r.b))]
    return sorted(rows, key=lambda r: section_order[r.section])  # stable: keeps name order


def _cell(value: Value, name: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if "utilisation" in name:
        return fmt_percent(value)
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.2f}"


def _delta_text(row: Row) -> tuple[str, str]:
    if row.delta is None:
        return ("changed" if row.a != row.b else "", "")
    rel = row.relative
    if "utilisation" in row.name:
        delta = f"{row.delta * 100:+.0f} pt"
    elif abs(row.delta) >= 100 or row.delta == int(row.delta):
        delta = f"{row.delta:+,.0f}"
    else:
        delta = f"{row.delta:+,.2f}"
    if rel is None or row.delta == 0:
        return (delta, "")
    return (delta, "new" if rel == float("inf") else f"{rel * 100:+.0f}%")


def print_table(console: Console, a: Report, b: Report, rows: list[Row]) -> None:
    title_a = f"A: {a.summary['scenario']} ({a.summary['run']})"
    title_b = f"B: {b.summary['scenario']} ({b.summary['run']})"
    console.print(f"[bold]{title_a}[/]\n[bold]{title_b}[/]")
    table = Table("", "metric", "A", "B", "B − A", "", box=None, pad_edge=False)
    section = None
    for row in rows:
        label = row.section if row.section != section else ""
        section = row.section
        delta, rel = _delta_text(row)
        style = "bold yellow" if row.significant else ""
        a_text, b_text = _cell(row.a, row.name), _cell(row.b, row.name)
        if row.section == "expectations" or row.name == "verdict":
            a_text, b_text = _verdict_markup(a_text), _verdict_markup(b_text)
        table.add_row(
            f"[bold]{label}[/]",
            row.name,
            a_text,
            b_text,
            f"[{style}]{delta}[/]" if style else delta,
            f"[{style}]{rel}[/]" if style else rel,
        )
    console.print(table)


def _verdict_markup(text: str) -> str:
    return {"PASS": "[green]PASS[/]", "pass": "[green]pass[/]", "FAIL": "[red]FAIL[/]"}.get(
        text, text
    )


# --- HTML ----------------------------------------------------------------------------------


def _overlay(
    a: RunData, b: RunData, series_a: dict[str, XY], series_b: dict[str, XY], y_title: str,
    step: float | None = None, **kw: Any,
) -> Chart:  # fmt: skip
    """A solid, B dashed, same colour per key; both runs' fault bands. ``step``: per-interval
    series (the load's seconds), drawn as steps."""
    keys = list(dict.fromkeys([*series_a, *series_b]))
    lines = []
    for i, key in enumerate(keys):
        color = ROLE_COLORS.get(key, PALETTE[i % len(PALETTE)])
        if key in series_a:
            lines.append(Line(f"A {key}", series_a[key], color, step=step))
        if key in series_b:
            lines.append(Line(f"B {key}", series_b[key], color, dash="6 4", step=step))
    bands = [Band(f"A-{f.id}", f"A {f.label}", f.start, f.end) for f in a.faults]
    bands += [Band(f"B-{f.id}", f"B {f.label}", f.start, f.end) for f in b.faults]
    return Chart(lines, (0.0, max(a.end, b.end, 1.0)), y_title, bands=bands, **kw)


def _tw(run: RunData) -> dict[str, XY]:
    return run.series(
        "tcp_states", "time_wait", where=lambda p: is_family_total(p.tags)
    )


def render_html(a: Report, b: Report, rows: list[Row]) -> str:
    ra, rb = a.run, b.run
    charts = [
        ("TIME_WAIT per role", _overlay(ra, rb, _tw(ra), _tw(rb), "sockets in TIME_WAIT")),
        (
            "Port utilisation of the busiest group",
            _overlay(
                ra, rb,
                ra.series("port_budget_summary", "max_utilisation"),
                rb.series("port_budget_summary", "max_utilisation"),
                "utilisation", y_format=fmt_percent, y_max=1.0,
            ),
        ),
        (
            "Connections started and failed per second",
            _overlay(
                ra, rb,
                {"started/s": ra.load.rate, "failures/s": ra.load.failures},
                {"started/s": rb.load.rate, "failures/s": rb.load.failures},
                "per second", step=1.0,
            ),
        ),
        (
            "Latency percentiles",
            _overlay(ra, rb, ra.load.percentiles, rb.load.percentiles, "milliseconds", step=1.0),
        ),
        (
            "Zombie candidates",
            _overlay(
                ra, rb,
                ra.series("tcp_zombies", "candidates"),
                rb.series("tcp_zombies", "candidates"),
                "sockets",
            ),
        ),
    ]  # fmt: skip
    body = [
        "<header class='top'><h1>chaos compare</h1>",
        f"<div class='sub'>A: {escape(a.summary['scenario'])} · {escape(a.summary['run'])}"
        f" · {escape(a.summary['verdict'])}</div>",
        f"<div class='sub'>B: {escape(b.summary['scenario'])} · {escape(b.summary['run'])}"
        f" · {escape(b.summary['verdict'])}</div></header>",
        "<h2>Signature</h2><table><tr><th>section</th><th>metric</th><th>A</th><th>B</th>"
        "<th>B − A</th><th></th></tr>",
    ]
    for row in rows:
        delta, rel = _delta_text(row)
        mark = " class='bad'" if row.significant else ""
        body.append(
            f"<tr><td>{escape(row.section)}</td><td>{escape(row.name)}</td>"
            f"<td>{escape(_cell(row.a, row.name))}</td><td>{escape(_cell(row.b, row.name))}</td>"
            f"<td{mark}>{escape(delta)}</td><td{mark}>{escape(rel)}</td></tr>"
        )
    body.append("</table><h2>Over time (A solid, B dashed)</h2>")
    for title, chart in charts:
        stats = _legend(chart.lines, None, "%" if chart.y_max == 1.0 else "")
        legend = "".join(
            f'<span><span class="sw" style="border-color:{line.color};'
            f'{"border-top-style:dashed;" if line.dash else ""}"></span>{escape(line.label)} '
            f'<span class="st">{escape(stats.get(line.label, ""))}</span></span>'
            for line in chart.lines
        )
        body.append(
            f"<div class='plot'><h3>{escape(title)}</h3>{render(chart)}"
            f"<div class='legend'>{legend}</div></div>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>chaos compare</title><style>{CSS}"
        f".bad{{color:{BAND_EDGE}}}</style></head><body><main>{''.join(body)}</main></body></html>\n"
    )


def compare_runs(run_a: Path, run_b: Path, console: Console, html_out: Path | None) -> int:
    a, b = analyse(run_a), analyse(run_b)
    rows = diff(a.summary, b.summary)
    print_table(console, a, b, rows)
    if html_out is not None:
        try:
            html_out.write_text(render_html(a, b, rows))
        except OSError as exc:
            raise SinkError(
                f"cannot write {html_out}: {exc.strerror}", "pick a writable path for --html"
            ) from None
        console.print(f"comparison: {html_out}")
    return 0
