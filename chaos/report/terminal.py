"""The one terminal summary of a run: what `chaos run` prints as it ends, and `chaos report`
prints of a run directory later.

It is fed by what both have: ``summary.json`` (what `chaos run` wrote: the load's totals, the
origin's and the proxy's counts, the sink's delivery, the expectations' verdicts) and, when
the report could be made, the report's summary (key numbers, faults, peaks per role, drift).
Without a report (``chaos run --no-report``, or a run the report cannot read) the load's
totals stand in for the key numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from chaos.expect import Verdict
from chaos.report.html import key_numbers

if TYPE_CHECKING:
    from chaos.report import Report

__all__ = ["print_drift", "print_summary"]

_VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red"}
#: the sink's InfluxDB delivery counts, in the order they are printed
_DELIVERY = ("written", "spooled", "replayed", "possibly_duplicated", "dropped", "left_in_spool")


def print_summary(console: Console, summary: dict[str, Any], report: Report | None = None) -> None:
    """``summary``: the run's ``summary.json``; ``report``: its report, when there is one."""
    if report is not None:
        _print_report_head(console, report.summary)
    else:
        _print_load(console, summary.get("load", {}))
    _print_run_facts(console, summary)
    _print_verdicts(console, summary.get("expectations") or [])
    drift = report.summary["drift"] if report is not None else summary.get("drift")
    if drift is not None:
        print_drift(console, drift)
    if report is not None:
        samples = report.summary["samples"]
        if samples["bad_lines"]:
            console.print(
                f"[yellow]{samples['bad_lines']} bad lines in samples.lp skipped[/] "
                f"({escape(str(samples['first_error']))})"
            )
        if report.html_path:
            console.print(f"report: {report.html_path}\nsummary: {report.json_path}")
    run_dir = report.run.path if report is not None else summary.get("run_dir")
    if run_dir is not None:
        console.print(f"results in {run_dir}")


def print_drift(console: Console, drift: dict[str, Any]) -> None:
    """One line: the drift verdict of a long run (see :mod:`chaos.report.drift`)."""
    style = _VERDICT_STYLE.get(drift["verdict"], "dim")
    console.print(f"drift [{style}]{drift['verdict']}[/]: {escape(drift['reason'])}")


def _print_report_head(console: Console, summary: dict[str, Any]) -> None:
    """The verdict, the key numbers, the fault windows and the peaks per role."""
    style = _VERDICT_STYLE.get(summary["verdict"], "dim")
    console.print(
        f"[bold]{summary['scenario']}[/]  run {summary['run']}  [{style}]{summary['verdict']}[/]"
    )
    cards = Table(box=None, pad_edge=False, show_header=False)
    for title, value, detail in key_numbers(summary):
        cards.add_row(title, f"[bold]{value}[/]", f"[dim]{detail}[/]")
    console.print(cards)
    for fault in summary["faults"]:
        if fault.get("instant"):
            when = f"at {fault['start_s']:.1f} s (irreversible)"
        else:
            end = f"{fault['end_s']:.1f} s" if fault["reverted"] else "[red]not reverted[/]"
            when = f"{fault['start_s']:.1f} s to {end}"
        steps = f" ({fault['steps']} steps)" if fault.get("steps", 1) > 1 else ""
        console.print(f"  fault {fault['id']} {fault['kind']} → {fault['target']}{steps}: {when}")
    roles = Table("role", "ESTAB peak", "TIME_WAIT peak", "CLOSE_WAIT peak", "port util peak",
                  "zombies peak", box=None, pad_edge=False)  # fmt: skip

    def peak(stats: dict[str, float] | None, percent: bool = False) -> str:
        if not stats:
            return "–"
        return f"{stats['peak'] * 100:.0f}%" if percent else f"{stats['peak']:,.0f}"

    for role, entry in summary["roles"].items():
        states = entry["states"]
        roles.add_row(
            role,
            peak(states.get("established")),
            peak(states.get("time_wait")),
            peak(states.get("close_wait")),
            peak(entry.get("port_utilisation"), percent=True),
            peak(entry.get("zombie_candidates")),
        )
    console.print(roles)


def _print_load(console: Console, load: dict[str, Any]) -> None:
    """The load's totals as `chaos run` counted them (without a report to show)."""
    table = Table("", "", box=None, pad_edge=False, show_header=False)
    for key, value in load.items():
        if not isinstance(value, dict | list):
            shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
            table.add_row(key.replace("_", " "), shown)
    for failure, count in load.get("failures_by_class", {}).items():
        table.add_row(f"  failures {failure}", str(count))
    if table.row_count:
        console.print(table)


def _print_run_facts(console: Console, summary: dict[str, Any]) -> None:
    """What only the run saw: the origin's and the proxy's counts, the sink's delivery."""
    table = Table("", "", box=None, pad_edge=False, show_header=False)
    origin = summary.get("origin", {})
    if origin:
        table.add_row("origin requests served", str(origin.get("requests", "?")))
    if "proxy_logged" in summary:
        table.add_row("proxy log entries", str(summary["proxy_logged"]))
    sink = summary.get("sink", {})
    if sink:
        table.add_row("samples recorded", str(sink["recorded"]))
    if sink.get("influxdb"):
        delivery = ", ".join(f"{k.replace('_', ' ')} {sink[k]}" for k in _DELIVERY)
        table.add_row("InfluxDB points", delivery)
    if table.row_count:
        console.print(table)


def _print_verdicts(console: Console, expectations: list[dict[str, Any]]) -> None:
    verdicts = [Verdict.from_dict(e) for e in expectations if isinstance(e, dict)]
    if not verdicts:
        return
    table = Table("", "expectation", "observed", box=None, pad_edge=False)
    for v in verdicts:
        mark = Text("PASS", "bold green") if v.passed else Text("FAIL", "bold red")
        observed = "no data" if v.observed is None else f"{v.observed:g}"
        table.add_row(mark, Text(v.label or v.describe()), Text(f"{observed}  ({v.detail})"))
    console.print(table)
    failed = sum(not v.passed for v in verdicts)
    if failed:
        console.print(Text(f"{failed} of {len(verdicts)} expectations failed", "bold red"))
    else:
        console.print(Text(f"all {len(verdicts)} expectations passed", "bold green"))
