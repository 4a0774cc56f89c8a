"""The per-second load series: its on-disk format, merging, and latency over a window.

The Locust workers (``locustfiles/_series.py``) count, per wall-clock second, the connections
that started, completed and failed (by class) and record each connection's phases in
microseconds into HdrHistograms; every second they send that second to the master, which
merges the workers' seconds (:meth:`Second.merge`) and appends one JSON line per second to
``locust/load_series.jsonl`` in the run directory (:func:`series_path`). The controller tails
that file into the ``load`` and ``load_failures`` measurements
(:mod:`chaos.collect.load_series`) and answers window queries from the histograms kept in it
(:func:`window_latency`). The contract is ``docs/metrics.md`` (measurements ``load`` and
``load_failures``).

One line::

    {"t": 1764934800, "users": 20, "started": 500, "completed": 498, "failed": 2,
     "failures": {"ECONNREFUSED": 2}, "workers": 2, "late": 0,
     "hist": {"connect": "HISTFAAAA...", "first_byte": "...", "total": "...", "close": "..."}}

``t`` is the second described (unix seconds); ``hist`` holds each phase's histogram of that
second in HdrHistogram's compressed base64 form (phases without samples are absent), and
``summary`` each phase's count, percentiles, max, mean and min in microseconds, computed by
the master once (the controller reads them without decoding a histogram).

Which second a sample belongs to: ``started`` by the second its connect() began, ``connect``
by the second its connect finished, ``tls`` by the second its TLS handshake completed;
``completed``/``failed``, ``total``, ``first_byte`` and ``close`` by the second the
connection ended (a connection is recorded once, when it ends, so a second is complete as
soon as it is over).

Stdlib and ``hdrh`` only: imported by the controller and by the Locust processes alike.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

#: the phases the users time (chaos.record.schema.LOAD_PHASES names them too); ``tls`` only
#: with TLS (``load.tls``)
PHASES = ("connect", "tls", "first_byte", "total", "close")
PERCENTILES = (50.0, 90.0, 99.0)
SERIES_FILE = Path("locust") / "load_series.jsonl"

# Histogram range and precision: 1 us to one hour, 2 significant digits (1 % resolution).
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 2


def series_path(run_dir: Path) -> Path:
    return Path(run_dir) / SERIES_FILE


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_values(histogram: HdrHistogram, values: Iterable[int]) -> None:
    """Record microsecond values, clamped into the histogram's range.

    hdrh's ``record_value`` is pure Python (~3 us a call) and a second's values in
    microseconds are mostly distinct, so each value is first reduced to its bucket's lowest
    equivalent value (:func:`bucket_floor`, what the histogram itself would keep of it) and
    each bucket recorded once with its count: the same counts, total, min and max as
    recording every value, for a few hundred calls a second instead of one per value.
    """
    buckets: dict[int, int] = {}
    for value, count in Counter(values).items():  # counting the raw values runs in C
        floor = bucket_floor(histogram, min(max(value, LOWEST_US), HIGHEST_US))
        buckets[floor] = buckets.get(floor, 0) + count
    for value, count in buckets.items():
        histogram.record_value(value, count)


def bucket_floor(histogram: HdrHistogram, value: int) -> int:
    """hdrh's ``get_lowest_equivalent_value`` in integer arithmetic (no method calls): the
    smallest value counted in the same bucket as ``value``."""
    shift = (value | histogram.sub_bucket_mask).bit_length() - (
        histogram.sub_bucket_half_count_magnitude + 1
    )
    return value >> shift << shift


def recorded_buckets(histogram: HdrHistogram) -> Iterator[tuple[int, int, int]]:
    """``(lowest, size, count)`` of each bucket holding counts, in value order: ``lowest`` is
    the bucket's lowest equivalent value and ``size`` its width (hdrh's equivalent range).

    hdrh's own queries walk its whole counts array (a few thousand buckets) calling Python
    methods per bucket: ~10 ms for the four phases' summaries of a second, every second, in
    the process that runs the users. Here the array is copied once (C), the empty buckets
    are skipped in C (``compress``) and each bucket's value is plain integer arithmetic.
    """
    half_magnitude = histogram.sub_bucket_half_count_magnitude
    half = histogram.sub_bucket_half_count
    unit = histogram.unit_magnitude
    counts = histogram.counts[:]
    for index, count in compress(enumerate(counts), counts):
        bucket = (index >> half_magnitude) - 1  # hdrh's get_value_from_index
        sub_bucket = (index & (half - 1)) + half
        if bucket < 0:
            sub_bucket -= half
            bucket = 0
        yield sub_bucket << (bucket + unit), 1 << (bucket + unit), count


def mean_of(histogram: HdrHistogram) -> float:
    """hdrh's ``get_mean_value`` (each bucket counted at its middle), in one pass."""
    total = sum(count * (low + (size >> 1)) for low, size, count in recorded_buckets(histogram))
    return total / histogram.get_total_count()


@dataclass(frozen=True)
class LatencySummary:
    """One phase's latency over some seconds, in microseconds (0 when ``count`` is 0;
    ``mean_us`` None then)."""

    count: int = 0
    p50_us: int = 0
    p90_us: int = 0
    p99_us: int = 0
    max_us: int = 0
    mean_us: float | None = None
    min_us: int = 0

    @classmethod
    def of(cls, histogram: HdrHistogram | None) -> LatencySummary:
        """hdrh's percentiles (the highest value equivalent to the first bucket whose
        cumulative count reaches the percentile's count), min, max and mean, in one pass
        over :func:`recorded_buckets`."""
        if histogram is None or histogram.get_total_count() == 0:
            return cls()
        total_count = histogram.get_total_count()
        # hdrh's get_target_count_at_percentile
        targets = [max(int(pct * total_count / 100 + 0.5), 1) for pct in PERCENTILES]
        found: list[int] = []
        cumulative = weighted = 0
        lowest = low = size = -1
        for low, size, count in recorded_buckets(histogram):
            if lowest < 0:
                lowest = low
            cumulative += count
            weighted += count * (low + (size >> 1))
            while len(found) < len(targets) and cumulative >= targets[len(found)]:
                found.append(low + size - 1)
        return cls(
            count=int(total_count),
            p50_us=found[0],
            p90_us=found[1],
            p99_us=found[2],
            max_us=low + size - 1,
            mean_us=weighted / total_count,
            min_us=lowest,
        )


@dataclass
class Second:
    """What happened in one wall-clock second, on one worker or merged over all of them."""

    t: int
    users: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    hist: dict[str, HdrHistogram] = field(default_factory=dict)
    workers: int = 0  # how many workers' reports were merged into it
    late: int = 0  # connections that reached the master after their own second was written
    # per phase, as the master wrote it into the line (read without decoding the histograms)
    summaries: dict[str, LatencySummary] = field(default_factory=dict)

    def histogram(self, phase: str) -> HdrHistogram:
        found = self.hist.get(phase)
        if found is None:
            found = self.hist[phase] = new_histogram()
        return found

    def merge(self, other: Second) -> None:
        """Add ``other`` (another worker's report of the same second, or a late one)."""
        self.users += other.users
        self.started += other.started
        self.completed += other.completed
        self.failed += other.failed
        for name, count in other.failures.items():
            self.failures[name] = self.failures.get(name, 0) + count
        for phase, histogram in other.hist.items():
            self.histogram(phase).add(histogram)
        self.workers += other.workers
        self.late += other.late

    def summary(self, phase: str) -> LatencySummary:
        histogram = self.hist.get(phase)
        if histogram is not None:
            return LatencySummary.of(histogram)
        return self.summaries.get(phase, LatencySummary())

    # --- the JSON line ---------------------------------------------------------------------
    def to_json(self, *, summaries: bool = False) -> dict[str, Any]:
        """``summaries``: also each phase's percentiles (the series file has them, so that
        the controller's sampler never decodes a histogram; workers' messages do not)."""
        data: dict[str, Any] = {
            "t": self.t,
            "users": self.users,
            "started": self.started,
            "completed": self.completed,
            "failed": self.failed,
            "failures": dict(self.failures),
            "workers": self.workers,
            "late": self.late,
            "hist": {
                phase: histogram.encode().decode("ascii")
                for phase, histogram in self.hist.items()
                if histogram.get_total_count()
            },
        }
        if summaries:
            data["summary"] = {
                phase: asdict(summary)
                for phase in self.hist
                if (summary := self.summary(phase)).count
            }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], *, histograms: bool = True) -> Second:
        """``histograms=False`` skips decoding them (counts only: cheaper)."""
        hist = (
            {phase: HdrHistogram.decode(text) for phase, text in (data.get("hist") or {}).items()}
            if histograms
            else {}
        )
        return cls(
            t=int(data["t"]),
            users=int(data.get("users", 0)),
            started=int(data.get("started", 0)),
            completed=int(data.get("completed", 0)),
            failed=int(data.get("failed", 0)),
            failures={str(k): int(v) for k, v in (data.get("failures") or {}).items()},
            hist=hist,
            workers=int(data.get("workers", 0)),
            late=int(data.get("late", 0)),
            summaries={
                phase: LatencySummary(**values)
                for phase, values in (data.get("summary") or {}).items()
            },
        )

    def to_line(self) -> str:
        """The series file's line (with the summaries)."""
        return json.dumps(self.to_json(summaries=True), separators=(",", ":")) + "\n"


def parse_line(line: str | bytes, *, histograms: bool = True) -> Second | None:
    """One line of the series file; None for a blank or broken (half-written) line."""
    try:
        data = json.loads(line)
        return Second.from_json(data, histograms=histograms)
    except (ValueError, KeyError, TypeError):
        return None


def read_series(run_dir: Path, *, histograms: bool = True) -> Iterator[Second]:
    """Every second of a run's series, in file order (increasing ``t``)."""
    path = series_path(run_dir)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if line.endswith(b"\n"):
                second = parse_line(line, histograms=histograms)
                if second is not None:
                    yield second


def window_latency(run_dir: Path, phase: str, start: float, end: float) -> LatencySummary:
    """``phase``'s latency merged over the seconds ``t`` with ``start <= t < end`` (unix
    seconds; a second belongs to the window when it starts inside it)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: one of {', '.join(PHASES)}")
    merged: HdrHistogram | None = None
    # Only the window's histograms of this phase are decoded (decoding is the costly part).
    try:
        fh = open(series_path(run_dir), "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return LatencySummary()
    with fh:
        for line in fh:
            if not line.endswith(b"\n"):
                continue
            try:
                data = json.loads(line)
                t = int(data["t"])
            except (ValueError, KeyError, TypeError):
                continue
            if not start <= t < end:
                continue
            text = (data.get("hist") or {}).get(phase)
            if not text:
                continue
            histogram = HdrHistogram.decode(text)
            if merged is None:
                merged = histogram
            else:
                merged.add(histogram)
    return LatencySummary.of(merged)
