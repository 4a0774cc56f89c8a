"""The point every stage hands on, and how it becomes InfluxDB line protocol.

Collectors produce points (:class:`~chaos.collect.base.Collector`), the sink writes them
(:func:`to_line`), :mod:`chaos.record.lineproto` reads them back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

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


def time_ns_of(now: float) -> int:
    return int(now * 1_000_000_000)


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
