"""``chaos report`` and ``chaos compare``: what a run directory says, for people and for CI.

* :func:`write_report` reads a run directory (:mod:`.data`), makes the plots and the JSON
  summary (:mod:`.build`), writes ``report.html`` (:mod:`.html`, inline SVG from
  :mod:`.svg`) and ``report.json`` into it.
* :func:`print_summary` is the terminal view of the same summary.
* :mod:`.compare` puts two runs side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chaos.errors import SinkError
from chaos.record.rundir import RunFiles
from chaos.report.build import Plot, make_plots, summarise
from chaos.report.data import RunData, load_run
from chaos.report.html import key_numbers, render_page

__all__ = [
    "Report",
    "analyse",
    "drift_failed",
    "load_run",
    "print_drift",
    "print_summary",
    "write_report",
]


@dataclass
class Report:
    run: RunData
    plots: list[Plot]
    summary: dict[str, Any]
    html_path: Path | None = None
    json_path: Path | None = None


def analyse(run_dir: str | Path) -> Report:
    """Load a run and compute its plots and summary, without writing anything."""
    run = load_run(run_dir)
    plots = make_plots(run)
    return Report(run, plots, summarise(run, plots))


def write_report(run_dir: str | Path, html_out: Path | None = None) -> Report:
    """``report.html`` and ``report.json`` into the run directory (or ``html_out``)."""
    report = analyse(run_dir)
    files = RunFiles(report.run.path)
    html_path = html_out or files.report_html
    json_path = files.report_json
    try:
        html_path.write_text(render_page(report.summary, report.plots))
        json_path.write_text(json.dumps(report.summary, indent=2) + "\n")
    except OSError as exc:
        raise SinkError(
            f"cannot write the report: {exc.strerror}: {exc.filename}",
            "check that the run directory is writable (runs made under sudo belong to you)",
        ) from None
    report.html_path, report.json_path = html_path, json_path
    return report


_VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red"}


def print_drift(console: Console, drift: dict[str, Any]) -> None:
    """One line: the drift verdict of a long run (see :mod:`chaos.report.drift`)."""
    style = _VERDICT_STYLE.get(drift["verdict"], "dim")
    console.print(f"drift [{style}]{drift['verdict']}[/]: {escape(drift['reason'])}")


def drift_failed(summary: dict[str, Any]) -> bool:
    return bool(summary.get("drift", {}).get("verdict") == "FAIL")


def print_summary(console: Console, report: Report) -> None:
    summary = report.summary
    style = _VERDICT_STYLE.get(summary["verdict"], "dim")
    console.print(
        f"[bold]{summary['scenario']}[/]  run {summary['run']}  [{style}]{summary['verdict']}[/]"
    )
    cards = Table(box=None, pad_edge=False, show_header=False)
    for title, value, detail in key_numbers(summary):
        cards.add_row(title, f"[bold]{value}[/]", f"[dim]{detail}[/]")
    console.print(cards)
    for fault in summary["faults"]:
        end = f"{fault['end_s']:.1f} s" if fault["reverted"] else "[red]not reverted[/]"
        console.print(
            f"  fault {fault['id']} {fault['kind']} → {fault['target']}: "
            f"{fault['start_s']:.1f} s to {end}"
        )
    roles = Table("role", "ESTAB peak", "TIME_WAIT peak", "CLOSE_WAIT peak", "port util peak",
                  "zombies peak", box=None, pad_edge=False)  # fmt: skip
    for role, entry in summary["roles"].items():
        states = entry["states"]

        def peak(stats: dict[str, float] | None, percent: bool = False) -> str:
            if not stats:
                return "–"
            return f"{stats['peak'] * 100:.0f}%" if percent else f"{stats['peak']:,.0f}"

        roles.add_row(
            role,
            peak(states.get("established")),
            peak(states.get("time_wait")),
            peak(states.get("close_wait")),
            peak(entry.get("port_utilisation"), percent=True),
            peak(entry.get("zombie_candidates")),
        )
    console.print(roles)
    for result in summary["expectations"]:
        mark = "[green]pass[/]" if result.get("passed") else "[red]FAIL[/]"
        console.print(
            f"  {mark} {result.get('metric')} {result.get('op')} {result.get('value')} "
            f"({result.get('when')}, {result.get('role') or 'any role'}): "
            f"observed {result.get('observed')}"
        )
    print_drift(console, summary["drift"])
    if summary["samples"]["bad_lines"]:
        console.print(
            f"[yellow]{summary['samples']['bad_lines']} bad lines in samples.lp skipped[/] "
            f"({summary['samples']['first_error']})"
        )
    if report.html_path:
        console.print(f"report: {report.html_path}\nsummary: {report.json_path}")
