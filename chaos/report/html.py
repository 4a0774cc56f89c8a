"""The report as one self-contained HTML page: inline CSS and SVG, no script, no fetches.

Everything a browser needs is in the file, so it can be mailed, attached to a CI job or
opened years later offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any

from chaos.report.build import SECTIONS, Plot
from chaos.report.svg import BAND_FILL, render

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1f2328;
 font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:20px 24px 40px}
header.top{background:#fff;border-radius:10px;padding:18px 22px;box-shadow:0 1px 3px #0002}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:28px 0 8px;padding-bottom:4px;border-bottom:2px solid #d0d7de}
h3{font-size:14px;margin:0 0 2px}
.sub{color:#57606a}
.verdict{display:inline-block;font-weight:700;padding:3px 12px;border-radius:14px;
 margin-left:10px;font-size:14px;vertical-align:3px}
.PASS{background:#dafbe1;color:#116329}.FAIL{background:#ffebe9;color:#a40e26}
.none{background:#eaeef2;color:#57606a}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(168px,1fr));gap:10px;
 margin-top:14px}
.card{background:#f6f8fa;border-radius:8px;padding:8px 12px}
.card .k{color:#57606a;font-size:12px}.card .v{font-size:19px;font-weight:650}
.card .d{color:#57606a;font-size:12px}
.plot{background:#fff;border-radius:10px;padding:12px 14px 8px;margin:10px 0;
 box-shadow:0 1px 3px #0002}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;margin:2px 0 2px 70px;font-size:12.5px}
.legend span.sw{display:inline-block;width:18px;height:0;border-top:3px solid;
 vertical-align:middle;margin-right:6px}
.legend .st{color:#6e7781}
.band-key{display:inline-block;width:14px;height:12px;background:BAND;opacity:.35;
 border:1px dashed #b58100;vertical-align:-1px;margin-right:5px}
.note{color:#6e7781;font-size:12px;margin:2px 0 0 70px}
table{border-collapse:collapse;margin:6px 0;background:#fff;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f6f8fa;font-weight:600}
.ok{color:#116329;font-weight:600}.bad{color:#a40e26;font-weight:600}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:0 12px}
.grid2 .plot{margin:6px 0}.grid2 .legend,.grid2 .note{margin-left:40px}
footer{color:#6e7781;font-size:12px;margin-top:24px}
""".replace("BAND", BAND_FILL)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: Any, unit: str = "") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text}{unit}"


def _table(head: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head_html = "".join(f"<th>{escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head_html}</tr>{body}</table>'


def _us(value: Any) -> str:
    """Microseconds as a person reads them: 412 µs, 3.25 ms, 1,204 ms."""
    if not isinstance(value, int | float):
        return "–"
    if value < 1000:
        return f"{value:.0f} µs"
    return f"{value / 1000:.2f} ms" if value < 100_000 else f"{value / 1000:,.0f} ms"


def _connections_detail(load: dict[str, Any]) -> str:
    """Under the connections started: how they ended. Those still open when the load
    stopped ended neither way, so the origin's count is the completed one, not this."""
    rate = f"{_num(load.get('achieved_rate'))}/s achieved"
    if load.get("completed") is None:
        return rate
    cut = load.get("connections", 0) - load["completed"] - load.get("failures", 0)
    ended = f"{_num(load['completed'])} completed"
    if cut > 0:
        ended += f", {cut:,} cut at the stop"
    return f"started; {ended} · {rate}"


def key_numbers(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(title, value, detail) cards for the header; shared with the terminal summary."""
    load = summary["load"]
    cards = [
        ("duration", _num(summary["duration_s"], " s"), f"{len(summary['faults'])} fault(s)"),
        ("connections", _num(load.get("connections")), _connections_detail(load)),
        ("failures", _num(load.get("failures")),
         ", ".join(f"{k} {v:,}" for k, v in list(load["failures_by_class"].items())[:3])
         or "none"),
        ("latency p50 / p99", f"{_us(load.get('p50_us'))} / {_us(load.get('p99_us'))}",
         f"max {_us(load.get('max_us'))}, connect to close"),
    ]  # fmt: skip
    roles = summary["roles"]
    peak_tw = max(
        ((r, e["states"]["time_wait"]["peak"]) for r, e in roles.items()
         if "time_wait" in e["states"]),
        key=lambda i: i[1], default=None,
    )  # fmt: skip
    if peak_tw:
        cards.append(("peak TIME_WAIT", _num(peak_tw[1]), f"at {peak_tw[0]}"))
    peak_util = max(
        ((r, e["port_utilisation"]["peak"]) for r, e in roles.items() if "port_utilisation" in e),
        key=lambda i: i[1], default=None,
    )  # fmt: skip
    if peak_util:
        cards.append(("peak port utilisation", f"{peak_util[1] * 100:.0f}%", f"at {peak_util[0]}"))
    peak_z = max(
        ((r, e["zombie_candidates"]["peak"]) for r, e in roles.items() if "zombie_candidates" in e),
        key=lambda i: i[1], default=None,
    )  # fmt: skip
    if peak_z:
        cards.append(("peak zombie candidates", _num(peak_z[1]), f"at {peak_z[0]}"))
    sampler = summary.get("sampler") or {}
    if sampler.get("tick_ms"):
        tick = sampler["tick_ms"]
        detail = f"max {_num(tick['max'])} ms · {sampler['skipped_ticks']} skipped"
        cards.append(("sampler tick", f"{_num(tick['mean'])} ms", detail))
    return cards


def _header(summary: dict[str, Any]) -> str:
    result = summary["verdict"]
    cls = result if result in ("PASS", "FAIL") else "none"
    cards = "".join(
        f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
        f'<div class="d">{escape(d)}</div></div>'
        for k, v, d in key_numbers(summary)
    )
    return (
        f'<header class="top"><h1>{escape(summary["scenario"])}'
        f'<span class="verdict {cls}">{escape(result)}</span></h1>'
        f'<div class="sub">run {escape(summary["run"])} · started {_utc(summary["start_unix"])}'
        f' · {escape(summary["run_dir"])}</div><div class="cards">{cards}</div></header>'
    )


def _faults(summary: dict[str, Any]) -> str:
    faults = summary["faults"]
    if not faults:
        return "<p class='sub'>No faults were applied in this run.</p>"

    def ended(f: dict[str, Any]) -> tuple[str, str]:  # (reverted, lasted)
        if f.get("instant"):
            return "irreversible", "an instant"
        if f["reverted"]:
            return f"{f['end_s']:.1f} s", f"{f['end_s'] - f['start_s']:.1f} s"
        return "<span class='bad'>not reverted</span>", "–"

    rows = [
        (
            escape(f["id"]),
            escape(f["kind"]) + (f" ({f['steps']} steps)" if f.get("steps", 1) > 1 else ""),
            escape(f["target"]),
            f"{f['start_s']:.1f} s",
            *ended(f),
        )
        for f in faults
    ]
    key = "<p class='sub'><span class='band-key'></span>shaded on every plot below</p>"
    return _table(("fault", "kind", "target", "applied", "reverted", "lasted"), rows) + key


def _percent(value: object) -> str:
    return f"{float(value):.0%}" if isinstance(value, int | float) else "–"


def _saturated(step: dict[str, Any]) -> str:
    """Which side of the load generator ran out at a step (see chaos.sweep.saturation)."""
    if not step.get("saturated"):
        return ""
    return " (saturated)" if (step.get("generator_cpu") or 0) >= 0.9 else " (host saturated)"


def _sweep(sweep: dict[str, Any]) -> str:
    knee = sweep.get("knee")
    bound = " — a lower bound: the load generator ran out first" if sweep.get("lower_bound") else ""
    head = (
        f"<p>knee: <b>{escape(_num(knee))} conn/s</b> (the highest step that held{bound}); "
        f"first exhausted: <b>{escape(str(sweep.get('first_exhausted') or 'unknown'))}</b>"
        f" — {escape(str(sweep.get('evidence', '')))}</p>"
        if knee is not None
        else "<p class='bad'>no knee: the first step already broke, or none did</p>"
    )
    if sweep.get("verdict"):
        head += f"<p>{escape(str(sweep['verdict']))}</p>"
    rows = [
        (
            escape(_num(step.get("target"))),
            escape(_num(step.get("achieved"))),
            escape(f"{step.get('failures', 0)} "
                   + " ".join(f"{k}:{v}" for k, v in (step.get("classes") or {}).items())),
            escape(_us(step.get("p99_us"))),
            _percent(step.get("ports")),
            _percent(step.get("proxy_cpu")),
            _percent(step.get("origin_cpu")),
            _percent(step.get("generator_cpu")) + _saturated(step),
            _percent(step.get("host_idle")),
            escape(", ".join(step.get("exhausted") or []) or "–"),
            "<span class='ok'>held</span>" if step.get("passed")
            else f"<span class='bad'>broke</span> {escape(str(step.get('why') or ''))}",
        )
        for step in sweep.get("steps", [])
    ]
    header = ("target/s", "achieved/s", "failures", "p99", "ports", "proxy CPU", "origin CPU",
              "load CPU", "host idle", "ran out", "step")  # fmt: skip
    tail = ""
    if sweep.get("not_run"):
        rates = ", ".join(_num(r) for r in sweep["not_run"])
        tail = (
            f"<p>not run: {escape(rates)} conn/s — stopped early "
            f"({escape(str(sweep.get('stopped_early') or ''))}); "
            "<code>chaos sweep --all-steps</code> runs every step</p>"
        )
    return head + _table(header, rows) + tail


def _expectations(summary: dict[str, Any]) -> str:
    results = summary["expectations"]
    if not results:
        return "<p class='sub'>The scenario declares no expectations.</p>"
    rows = [
        (
            escape(str(e.get("label") or "")),
            escape(f"{e.get('agg') or 'max'}({e.get('metric', '')})"),
            escape(_expected(e)),
            escape(str(e.get("when", ""))),
            escape(str(e.get("role") or "any")),
            escape(_num(e.get("observed"))),
            "<span class='ok'>pass</span>" if e.get("passed") else "<span class='bad'>FAIL</span>",
        )
        for e in results
    ]
    header = ("expectation", "metric", "expected", "when", "role", "observed", "result")
    return _table(header, rows)


def _drift(drift: dict[str, Any]) -> str:
    """The soak verdict: each series' fitted change over the judged window and its limit."""
    verdict = drift["verdict"]
    cls = "ok" if verdict == "PASS" else "bad"
    start, end = drift["window_s"]
    rows = [
        (
            escape(s["label"]),
            escape(f"{_num(s['level'])} {s['unit']}"),
            escape(f"{s['change']:+.2f} {s['unit']}"),
            escape(f"{'+' if s['worse'] > 0 else '-'}{_num(s['limit'])} {s['unit']}"),
            "<span class='ok'>pass</span>" if s["passed"] else "<span class='bad'>FAIL</span>",
        )
        for s in drift["series"]
    ]
    header = ("series", "level (median)", "fitted change", "limit", "result")
    return (
        f"<p class='sub'><span class='{cls}'>{escape(verdict)}</span> over {start:.0f}–{end:.0f} s"
        f" of the run: {escape(drift['reason'])}</p>" + _table(header, rows)
    )


def _expected(result: dict[str, Any]) -> str:
    """``>= 0.9 * rate (= 360)``: the expression and the number it came to."""
    op, value = result.get("op", ""), str(result.get("value", ""))
    threshold = result.get("threshold")
    try:
        same = threshold is None or float(value) == float(threshold)
    except ValueError:
        same = False
    return f"{op} {value}" if same else f"{op} {value} (= {_num(threshold)})"


def _plot(plot: Plot) -> str:
    legend = "".join(
        f'<span><span class="sw" style="border-color:{line.color};'
        f'{"border-top-style:dashed;" if line.dash else ""}"></span>{escape(line.label)}'
        f' <span class="st">{escape(plot.legend_stats.get(line.label, ""))}</span></span>'
        for line in plot.chart.lines
    )
    note = f'<div class="note">{escape(plot.note)}</div>' if plot.note else ""
    return (
        f'<div class="plot" id="plot-{escape(plot.id)}" data-plot="{escape(plot.id)}" '
        f'data-section="{escape(plot.section)}" data-points="{plot.points}">'
        f"<h3>{escape(plot.title)}</h3>{render(plot.chart)}"
        f'<div class="legend">{legend}</div>{note}</div>'
    )


def _tables(summary: dict[str, Any]) -> str:
    # Rows are states and counters, columns the roles: a few roles fit across any screen.
    roles = summary["roles"]
    head = ("", *roles)
    rows = []
    for state in sorted({s for e in roles.values() for s in e["states"]}):
        cells = [e["states"].get(state) for e in roles.values()]
        if any(c and c["peak"] for c in cells):
            rows.append(
                [state.upper(), *(f"{_num(c['peak'])} / {_num(c['mean'])}" if c else "–"
                                  for c in cells)]
            )  # fmt: skip
    out = "<h3>Sockets per state: peak / mean (mean over the load window)</h3>"
    out += _table(head, rows) if rows else "<p class='sub'>no sockets seen</p>"
    counters = sorted({c for e in roles.values() for c, v in e["counters"].items() if v})
    if counters:
        rows = [[c, *(_num(e["counters"].get(c, 0)) for e in roles.values())] for c in counters]
        out += "<h3>Kernel counters of note: increase over the run (zero ones left out)</h3>"
        out += _table(head, rows)
    groups = summary["port_groups"]
    if groups:
        rows = [
            (escape(g["role"]), escape(g["src"]), escape(f"{g['dst']}:{g['dport']}"),
             _num(g["peak_used"]), _num(g["capacity"]),
             "–" if g["first_full_s"] is None else f"{g['first_full_s']} s")
            for g in groups
        ]  # fmt: skip
        out += "<h3>Busiest port groups</h3>"
        out += _table(("role", "source", "destination", "peak used", "capacity", "full at"), rows)
    sampler = summary.get("sampler") or {}
    if sampler.get("collectors_ms"):
        rows = [
            (escape(name), _num(s["mean"]), _num(s["p99"]), _num(s["max"]))
            for name, s in sampler["collectors_ms"].items()
        ]
        out += "<h3>Collector cost per sample (ms, each namespace)</h3>"
        out += _table(("collector", "mean", "p99", "max"), rows)
    return out


def render_page(summary: dict[str, Any], plots: list[Plot]) -> str:
    body = [_header(summary), "<h2>Faults</h2>", _faults(summary)]
    body += ["<h2>Expectations</h2>", _expectations(summary)]
    if summary.get("drift", {}).get("verdict") != "not judged":
        body += ["<h2>Drift over the run</h2>", _drift(summary["drift"])]
    if summary.get("sweep"):
        body += ["<h2>Capacity sweep</h2>", _sweep(summary["sweep"])]
    for section, title in SECTIONS.items():
        members = [p for p in plots if p.section == section]
        if not members:
            continue
        body.append(f'<section id="{section}"><h2>{escape(title)}</h2>')
        grid = len(members) > 1 and all(p.chart.width < 800 for p in members)
        body.append('<div class="grid2">' if grid else "<div>")
        body += [_plot(p) for p in members]
        body.append("</div></section>")
    body += ['<section id="tables"><h2>Numbers</h2>', _tables(summary), "</section>"]
    samples = summary["samples"]
    body.append(
        f"<footer>{samples['points']:,} samples from samples.lp"
        + (f", {samples['bad_lines']} bad lines skipped" if samples["bad_lines"] else "")
        + f" · load data: {escape(summary['load']['source'] or 'none')}"
        + " · written by <code>chaos report</code></footer>"
    )
    title = f"chaos report — {summary['scenario']} — {summary['run']}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
