"""What every collector produces and how a sample becomes InfluxDB line protocol.

A collector is one source (sock_diag census, kernel counters, conntrack, ...) in one network
namespace. It is built once (it opens its sockets and files inside the namespace then) and
asked for samples again and again by :class:`~chaos.collect.sampler.Sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

FieldValue = int | float | bool | str


@dataclass(frozen=True, slots=True)
class Point:
    """One point: a measurement, its tags, its fields and a timestamp in nanoseconds.

    The one type for a point wherever it travels: collectors produce it (as ``Sample``), the
    sink writes it (:func:`to_line`), :mod:`chaos.record.lineproto` reads it back. A point read
    from a line without a timestamp has ``time_ns`` None, and is written without one.
    """

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ns: int | None

    def as_dict(self) -> dict[str, object]:
        return {
            "measurement": self.measurement,
            "tags": self.tags,
            "fields": self.fields,
            "time_ns": self.time_ns,
        }


#: what a collector produces: a point (the name the collectors and the sampler use)
Sample = Point


@runtime_checkable
class Collector(Protocol):
    """A source of samples in one namespace.

    ``name`` identifies the source in ``collector_cost``; ``netns`` is the namespace label;
    ``period`` is the least number of seconds between two samples (0: every tick), so that
    an expensive source (the zombie scan) can run less often than the cheap ones.
    """

    name: str
    netns: str
    period: float

    def sample(self, now: float) -> list[Sample]:
        """Measure now; ``now`` is wall-clock seconds (``time.time()``) for the timestamps."""
        ...

    def close(self) -> None: ...


def time_ns_of(now: float) -> int:
    return int(now * 1_000_000_000)


@dataclass
class TagSet:
    """Tags every sample of a collector carries (``netns`` plus whatever the caller adds)."""

    base: dict[str, str] = field(default_factory=dict)

    def with_(self, **more: str) -> dict[str, str]:
        return {**self.base, **more}


# --- InfluxDB line protocol ----------------------------------------------------------------
#
# Escaping as the InfluxDB line protocol reference and influxdb-client-python do it:
# measurement: comma, space; tag keys, tag values, field keys: comma, equals sign, space;
# string field values: double quote and backslash. A backslash is doubled in names too, so
# that a name ending in a backslash cannot escape the separator after it. Newlines cannot be
# represented at all; they are written as the two characters \n.

_ESC_MEASUREMENT = str.maketrans(
    {"\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)
_ESC_KEY = str.maketrans(
    {
        "\\": "\\\\",
        ",": "\\,",
        "=": "\\=",
        " ": "\\ ",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
    }
)
_ESC_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _field_value(value: FieldValue) -> str | None:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # line protocol has no NaN or infinity: leave the field out
        return repr(value)
    return '"' + str(value).translate(_ESC_STRING) + '"'


def to_line(sample: Sample) -> str:
    """One sample as a line of InfluxDB line protocol (no trailing newline).

    Returns "" when no field is representable (a point needs at least one field). Tags are
    sorted by key, as InfluxDB recommends; empty tag values are left out (not allowed).
    """
    fields = []
    for key, value in sample.fields.items():
        text = _field_value(value)
        if text is not None:
            fields.append(f"{key.translate(_ESC_KEY)}={text}")
    if not fields:
        return ""
    head = sample.measurement.translate(_ESC_MEASUREMENT)
    tags = "".join(
        f",{k.translate(_ESC_KEY)}={v.translate(_ESC_KEY)}"
        for k, v in sorted(sample.tags.items())
        if v != ""
    )
    stamp = "" if sample.time_ns is None else f" {sample.time_ns}"
    return f"{head}{tags} {','.join(fields)}{stamp}"


def to_lines(samples: Iterable[Sample]) -> str:
    """Many samples, one per line, newline-terminated; ready for an HTTP write body."""
    lines = [line for line in map(to_line, samples) if line]
    return "\n".join(lines) + "\n" if lines else ""


def deltas(current: Mapping[str, int], previous: Mapping[str, int] | None) -> dict[str, int]:
    """Per-key increase since ``previous``; a counter that went down (reset) counts from 0."""
    if previous is None:
        return {}
    out = {}
    for key, value in current.items():
        before = previous.get(key)
        if before is None:
            continue
        out[key] = value - before if value >= before else value
    return out
