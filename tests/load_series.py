"""Synthetic per-second load series for unit tests of what reads them (the sweep, the
report, ``expect``): built with the producer's own :class:`chaos.load.series.Second` (real
HdrHistograms), written as the master writes it (``locust/load_series.jsonl``) and as the
collector turns it into ``load`` / ``load_failures`` points (``samples.lp``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chaos.collect.load_series import second_samples
from chaos.load import series
from chaos.record.point import Sample, to_lines

SECOND_NS = 1_000_000_000


@dataclass
class Second:
    """One second of load: ``started`` connections, ``failed`` of them failed (by
    ``classes``); whole-connection latencies: 97 % at ``p50_us``, 3 % at ``p99_us``."""

    started: int
    failed: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    p50_us: int = 400
    p99_us: int = 2_000
    users: int = 20

    def series(self, t: int) -> series.Second:
        ended = self.started
        second = series.Second(t=t, users=self.users, started=self.started,
                               completed=ended - self.failed, failed=self.failed,
                               failures=dict(self.classes), workers=1)  # fmt: skip
        slow = round(ended * 0.03)
        series.record_values(second.histogram("total"), [self.p50_us] * (ended - slow))
        series.record_values(second.histogram("total"), [self.p99_us] * slow)
        return second

    def samples(self, t: int) -> list[Sample]:
        return second_samples(self.series(t), {"role": "client"})


def load_samples(first: int, seconds: list[Second]) -> list[Sample]:
    return [s for i, second in enumerate(seconds) for s in second.samples(first + i)]


def write_run(
    run: Path,
    first: int,
    seconds: list[Second],
    *,
    ramp: float | None = None,
    extra: list[Sample] = (),  # type: ignore[assignment]
    events: list[dict] = (),  # type: ignore[assignment]
) -> None:
    """samples.lp, the series file and journal.jsonl of a run whose load ran from ``first``
    (unix seconds), one :class:`Second` a second; ``ramp``: the load.ramp event (default
    ``first``)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "samples.lp").write_text(to_lines([*load_samples(first, seconds), *extra]))
    path = series.series_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(s.series(first + i).to_line() for i, s in enumerate(seconds)))
    ramp = float(first) if ramp is None else ramp
    end = first + len(seconds) + 1.5
    journal = [
        {"ts": first - 2.0, "event": "run.start", "scenario": "synthetic"},
        {"ts": ramp - 0.2, "event": "load.start"},
        {"ts": ramp, "event": "load.ramp"},
        *events,
        {"ts": end, "event": "load.end"},
        {"ts": end + 1, "event": "run.end"},
    ]
    journal.sort(key=lambda e: e["ts"])
    (run / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in journal))


def assert_merged_from(seconds: list[series.Second], workers: int) -> None:
    """Every worker's report went into the seconds between the first and the last that all
    of them reported; only at the edges may a second come from fewer (a worker whose users
    started late on a busy host, or stopped first)."""
    counts = [s.workers for s in seconds]
    assert workers in counts, counts
    first, last = counts.index(workers), len(counts) - 1 - counts[::-1].index(workers)
    assert counts[first : last + 1] == [workers] * (last + 1 - first), counts
