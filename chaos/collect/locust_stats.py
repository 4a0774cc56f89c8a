"""Locust's per-second stats as samples: tails ``<prefix>_stats_history.csv`` (measurement
``locust``) and our locustfiles' ``--failures-csv`` file (measurement ``locust_failures``).

The Locust master (started with ``--csv PREFIX --csv-full-history``, see
:mod:`chaos.load.runner`) appends one row per second for every entry (our raw TCP user's
phases ``connection``, ``connect``, ``first_byte``, ``response``, ``close``, and
``Aggregated``). Locust flushes the file every 5 s and at exit, so rows arrive in bursts;
each point carries its row's own timestamp, not the time it was read. Only complete lines
are parsed; a partial last line waits for the next sample.

The failures file (``locust/failures_per_second.csv`` under ``chaos run``, written by
``locustfiles/_common.py``) has one row per error class and second,
``time,elapsed_s,class,count,total``; the master writes each second's rows about 5 s late,
once its workers have reported that second.

This module reads files; it never imports locust (gevent would patch the controller).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import BinaryIO

from chaos.record.point import FieldValue, Sample

MEASUREMENT = "locust"
FAILURES_MEASUREMENT = "locust_failures"

# column -> (field, type); percentile columns ("50%", "99.9%") are handled by name
_COLUMNS: dict[str, tuple[str, type]] = {
    "User Count": ("users", int),
    "Requests/s": ("rps", float),
    "Failures/s": ("fails_per_s", float),
    "Total Request Count": ("requests", int),
    "Total Failure Count": ("failures", int),
    "Total Median Response Time": ("median_ms", float),
    "Total Average Response Time": ("avg_ms", float),
    "Total Min Response Time": ("min_ms", float),
    "Total Max Response Time": ("max_ms", float),
    "Total Average Content Size": ("avg_bytes", float),
}


def percentile_field(column: str) -> str:
    """``"99.9%"`` -> ``"p99_9_ms"``."""
    return "p" + column.rstrip("%").replace(".", "_") + "_ms"


def _number(text: str, kind: type) -> int | float | None:
    try:
        value = float(text)
    except ValueError:  # "N/A" before the first request of an entry
        return None
    # one type per field, always: InfluxDB refuses a float where it has stored an int
    return int(value) if kind is int else value


class CsvTail:
    """Follows a CSV file that another process appends to; a collector base.

    Each ``sample`` parses the complete lines added since the last one (the first line is the
    header) and turns each row into samples with ``_to_samples``. ``netns`` labels where the
    writer ran; ``tags`` (e.g. ``role``) go on every sample. A missing file is not an error:
    the writer creates it when it starts.
    """

    name = "csv"

    def __init__(
        self,
        path: Path,
        *,
        netns: str = "host",
        tags: dict[str, str] | None = None,
        period: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.netns = netns
        self.period = period
        self.tags = dict(tags or {})
        self._fh: BinaryIO | None = None
        self._partial = b""
        self._header: list[str] | None = None

    def rows(self) -> list[dict[str, str]]:
        """The complete rows appended since the last call, as column -> text."""
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open between samples
            except FileNotFoundError:
                return []
        data = self._partial + self._fh.read()
        # A line without its newline yet is half-written: keep it for the next read.
        *complete, self._partial = data.split(b"\n")
        out = []
        for row in csv.reader(line.decode("utf-8", "replace").rstrip("\r") for line in complete):
            if not row:
                continue
            if self._header is None:
                self._header = row
                continue
            out.append(dict(zip(self._header, row, strict=False)))
        return out

    def sample(self, now: float) -> list[Sample]:
        return [sample for row in self.rows() for sample in self._to_samples(row)]

    def _to_samples(self, row: dict[str, str]) -> list[Sample]:
        raise NotImplementedError

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _stamp_ns(text: str | None) -> int | None:
    """Whole unix seconds (as written by Locust and our locustfiles) in nanoseconds."""
    try:
        return int(float(text)) * 1_000_000_000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class LocustHistory(CsvTail):
    """A collector (``name`` ``locust``) over one Locust stats-history CSV file."""

    name = "locust"

    def _to_samples(self, row: dict[str, str]) -> list[Sample]:
        sample = self._to_sample(row)
        return [] if sample is None else [sample]

    def _to_sample(self, row: dict[str, str]) -> Sample | None:
        stamp = _stamp_ns(row.get("Timestamp"))
        if stamp is None:
            return None
        fields: dict[str, FieldValue] = {}
        for column, text in row.items():
            if column in _COLUMNS:
                name, kind = _COLUMNS[column]
            elif column.endswith("%"):
                name, kind = percentile_field(column), float
            else:
                continue
            value = _number(text, kind)
            if value is not None:
                fields[name] = value
        if not fields:
            return None
        tags = {**self.tags, "netns": self.netns, "name": row.get("Name", "")}
        if row.get("Type"):
            tags["type"] = row["Type"]
        return Sample(MEASUREMENT, tags, fields, stamp)


class LocustFailures(CsvTail):
    """A collector (``name`` ``locust_failures``) over our locustfiles' ``--failures-csv``:
    one point per error class and second, tag ``class``, fields ``count`` (failures in that
    second) and ``total`` (the class's running total), at the row's own second."""

    name = "locust_failures"

    def _to_samples(self, row: dict[str, str]) -> list[Sample]:
        stamp = _stamp_ns(row.get("time"))
        name = row.get("class", "")
        count, total = _number(row.get("count", ""), int), _number(row.get("total", ""), int)
        if stamp is None or not name or count is None or total is None:
            return []
        tags = {**self.tags, "netns": self.netns, "class": name}
        return [Sample(FAILURES_MEASUREMENT, tags, {"count": count, "total": total}, stamp)]
