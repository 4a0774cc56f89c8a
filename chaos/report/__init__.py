"""``chaos report`` and ``chaos compare``: what a run directory says, for people and for CI.

* :func:`write_report` reads a run directory (:mod:`.data`), makes the plots and the JSON
  summary (:mod:`.build`), writes ``report.html`` (:mod:`.html`, inline SVG from
  :mod:`.svg`) and ``report.json`` into it.
* :func:`print_summary` (:mod:`.terminal`) is the terminal view of a run, the one `chaos run`
  prints as it ends and `chaos report` prints later.
* :mod:`.compare` puts two runs side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.errors import SinkError
from chaos.record.rundir import RunFiles
from chaos.report.build import Plot, make_plots, summarise
from chaos.report.data import RunData, load_run
from chaos.report.html import render_page
from chaos.report.terminal import print_drift, print_summary

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


def drift_failed(summary: dict[str, Any]) -> bool:
    return bool(summary.get("drift", {}).get("verdict") == "FAIL")
