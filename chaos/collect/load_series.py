"""The per-second load series as samples: tails the Locust master's series file
(``locust/load_series.jsonl``, see :mod:`chaos.load.series`) into the measurements ``load``
(one point per second) and ``load_failures`` (one point per second and failure class), each
stamped with the second it describes, not the time it was read (docs/metrics.md).

The master appends a second about 1 s after it ended (once every worker reported it); only
complete lines are parsed, a half-written last line waits for the next sample. Percentiles
come from the second's HdrHistograms, in microseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from chaos.load.series import PHASES, Second, parse_line
from chaos.record import schema
from chaos.record.point import FieldValue, Sample

MEASUREMENT = schema.LOAD
FAILURES_MEASUREMENT = schema.LOAD_FAILURES
NS = 1_000_000_000


def second_samples(second: Second, tags: dict[str, str]) -> list[Sample]:
    """The ``load`` point of one second and its ``load_failures`` points."""
    stamp = second.t * NS
    fields: dict[str, FieldValue] = {
        "users": second.users,
        "started": second.started,
        "completed": second.completed,
        "failed": second.failed,
        "late": second.late,
    }
    for phase in PHASES:
        summary = second.summary(phase)
        fields[f"{phase}_count"] = summary.count
        if summary.count:
            fields[f"{phase}_p50_us"] = summary.p50_us
            fields[f"{phase}_p90_us"] = summary.p90_us
            fields[f"{phase}_p99_us"] = summary.p99_us
            fields[f"{phase}_max_us"] = summary.max_us
    samples = [Sample(MEASUREMENT, dict(tags), fields, stamp)]
    for name, count in sorted(second.failures.items()):
        if count:
            samples.append(
                Sample(FAILURES_MEASUREMENT, {**tags, "class": name}, {"count": count}, stamp)
            )
    return samples


class LoadSeries:
    """A collector (``name`` ``load``) over one series file; a missing file is not an error
    (the master creates it when the test starts)."""

    name = "load"

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
        self.tags = {**(tags or {}), "netns": netns}
        self._fh: BinaryIO | None = None
        self._partial = b""

    def seconds(self) -> list[Second]:
        """The seconds appended since the last call."""
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open between samples
            except FileNotFoundError:
                return []
        data = self._partial + self._fh.read()
        *complete, self._partial = data.split(b"\n")
        # the master wrote each phase's summary into the line: no histogram decoded here
        return [
            second
            for line in complete
            if (second := parse_line(line, histograms=False)) is not None
        ]

    def sample(self, now: float) -> list[Sample]:
        return [sample for second in self.seconds() for sample in second_samples(second, self.tags)]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
