"""Synthetic per-second load series (the ``load`` and ``load_failures`` points of
docs/metrics.md) for unit tests of what reads them: the sweep, the report, ``expect``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chaos.record.point import Sample, to_lines

SECOND_NS = 1_000_000_000


@dataclass
class Second:
    started: int
    failed: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    p50_us: int = 400
    p99_us: int = 2_000
    users: int = 20

    def samples(self, t: int) -> list[Sample]:
        completed = self.started - self.failed
        fields = {"users": self.users, "started": self.started, "completed": completed,
                  "failed": self.failed, "total_count": completed}  # fmt: skip
        if completed:
            fields |= {"total_p50_us": self.p50_us, "total_p90_us": self.p50_us * 2,
                       "total_p99_us": self.p99_us, "total_max_us": self.p99_us * 2}  # fmt: skip
        out = [Sample("load", {"role": "client"}, fields, t * SECOND_NS)]
        out += [
            Sample("load_failures", {"role": "client", "class": name}, {"count": n}, t * SECOND_NS)
            for name, n in self.classes.items()
        ]
        return out


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
    """samples.lp and journal.jsonl of a run whose load ran from ``first`` (unix seconds),
    one :class:`Second` a second; ``ramp``: the load.ramp event (default ``first``)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "samples.lp").write_text(to_lines([*load_samples(first, seconds), *extra]))
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
