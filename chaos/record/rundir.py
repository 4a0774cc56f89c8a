"""The run directory: ``runs/<UTC time>-<scenario>/``, everything a run leaves behind.

Layout (:class:`RunFiles` names each file; no other module spells a file name)::

    scenario.yaml        the resolved scenario, every default filled in
    journal.jsonl        timestamped events, one JSON object per line (:mod:`.journal`)
    samples.lp           every point, InfluxDB line protocol (:mod:`.lineproto`)
    spool.lp             points InfluxDB has not taken yet
    summary.json         the load's totals and the verdicts (``chaos run``)
    sweep.json           a capacity sweep's steps and verdict (``chaos sweep``)
    report.html, .json   the report (``chaos report``)
    logs/<process>.log   output of every process the run started
    proxy/               the proxy's generated configuration
    origin-stats.json    the origin's counters at exit
    origin-access.log*   one line per request the origin served (if enabled)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from chaos.record.journal import Journal

__all__ = ["DEFAULT_ROOT", "RunDir", "RunFiles", "chown_to_invoker"]

DEFAULT_ROOT = Path("runs")


@dataclass(frozen=True)
class RunFiles:
    """The files of a run directory, by what they hold; for readers and writers alike."""

    path: Path

    SCENARIO: ClassVar[str] = "scenario.yaml"
    JOURNAL: ClassVar[str] = "journal.jsonl"
    SAMPLES: ClassVar[str] = "samples.lp"
    SPOOL: ClassVar[str] = "spool.lp"
    SUMMARY: ClassVar[str] = "summary.json"
    REPORT_HTML: ClassVar[str] = "report.html"
    REPORT_JSON: ClassVar[str] = "report.json"
    ORIGIN_STATS: ClassVar[str] = "origin-stats.json"
    SWEEP: ClassVar[str] = "sweep.json"

    @property
    def scenario(self) -> Path:
        return self.path / self.SCENARIO

    @property
    def journal_file(self) -> Path:
        return self.path / self.JOURNAL

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def spool(self) -> Path:
        return self.path / self.SPOOL

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def report_html(self) -> Path:
        return self.path / self.REPORT_HTML

    @property
    def report_json(self) -> Path:
        return self.path / self.REPORT_JSON

    @property
    def origin_stats(self) -> Path:
        return self.path / self.ORIGIN_STATS

    @property
    def sweep(self) -> Path:
        return self.path / self.SWEEP


class RunDir:
    """A run directory being written: its files, its logs and its open journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = RunFiles(path)
        self.logs = path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.files.journal_file)

    @classmethod
    def create(cls, label: str, root: Path = DEFAULT_ROOT) -> RunDir:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            suffix = f"-{attempt}" if attempt else ""
            path = root / f"{stamp}-{label}{suffix}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RuntimeError(f"cannot create a run directory under {root}")

    def write_scenario(self, text: str) -> None:
        """The resolved scenario as YAML (``loader.dump_resolved``), every default filled in."""
        self.files.scenario.write_text(text)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def close(self) -> None:
        self.journal.close()


def chown_to_invoker(path: Path) -> None:
    """Under sudo, give the run directory back to the user who asked for it."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if not (uid and gid):
        return
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            with contextlib.suppress(OSError):
                os.chown(name, int(uid), int(gid))
