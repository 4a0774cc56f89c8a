"""Locust's per-second stats as samples: tails ``<prefix>_stats_history.csv``.

The Locust master (started with ``--csv PREFIX --csv-full-history``, see
:mod:`chaos.load.runner`) appends one row per second for every entry (our raw TCP user's
phases ``connection``, ``connect``, ``first_byte``, ``response``, ``close``, and
``Aggregated``). Locust flushes the file every 5 s and at exit, so rows arrive in bursts;
each point carries its row's own timestamp, not the time it was read. Only complete lines
are parsed; a partial last line waits for the next sample.

This module reads a file; it never imports locust (gevent would patch the controller).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import BinaryIO

from chaos.collect.base import FieldValue, Sample

MEASUREMENT = "locust"

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


class LocustHistory:
    """A collector (``name`` ``locust``) over one Locust stats-history CSV file.

    ``netns`` labels where the load ran (the client namespace); ``tags`` (e.g. ``role``) go
    on every sample. A missing file is not an error: Locust creates it when it starts.
    """

    name = "locust"

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

    def sample(self, now: float) -> list[Sample]:
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open between samples
            except FileNotFoundError:
                return []
        data = self._partial + self._fh.read()
        *complete, self._partial = data.split(b"\n")
        rows = csv.reader(line.decode("utf-8", "replace").rstrip("\r") for line in complete)
        out = []
        for row in rows:
            if not row:
                continue
            if self._header is None:
                self._header = row
                continue
            sample = self._to_sample(dict(zip(self._header, row, strict=False)))
            if sample is not None:
                out.append(sample)
        return out

    def _to_sample(self, row: dict[str, str]) -> Sample | None:
        try:
            stamp = int(float(row["Timestamp"])) * 1_000_000_000
        except (KeyError, ValueError):
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

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
