"""The line-protocol reader against the project's own writer and the reference's corner cases."""

from __future__ import annotations

import pytest

from chaos.record.lineproto import (
    LineProtocolError,
    ParseStats,
    parse_line,
    parse_lines,
    read_points,
)
from chaos.record.point import Sample, to_line, to_lines


@pytest.mark.parametrize(
    "sample",
    [
        Sample("tcp_states", {"netns": "chaos-a-client", "role": "client"},
               {"established": 3, "time_wait": 0, "exact": False}, 1796086859637636352),
        Sample("m e,x", {"a b": "c,d=e", "k": "v\\"},
               {"f x": 1, "s": 'he said "hi" \\ ok, x=1', "b": True, "fl": 1.5}, 123),
        Sample("cost", {}, {"duration_ms": 0.25, "neg": -7, "big": 2**62}, 1),
        Sample("chaos_event", {"id": "f1"}, {"action": "apply", "note": "a\\nb"}, 5),
    ],
)  # fmt: skip
def test_round_trip_of_the_writer(sample: Sample) -> None:
    point = parse_line(to_line(sample))
    assert point.measurement == sample.measurement
    assert point.tags == sample.tags
    assert point.fields == sample.fields
    assert point.time_ns == sample.time_ns


def test_reference_forms() -> None:
    point = parse_line("cpu,host=a value=1u,ok=t,bad=F,x=1e3")
    assert point.time_ns is None
    assert point.fields == {"value": 1, "ok": True, "bad": False, "x": 1000.0}


@pytest.mark.parametrize(
    "line",
    ["", "m", "m f=1 2 3", "m,t f=1 1", "m f= 1", "m f=abc 1", 'm s="open 1', "m f=1 12x"],
)
def test_bad_lines_raise(line: str) -> None:
    with pytest.raises(LineProtocolError):
        parse_line(line)


def test_bad_lines_are_counted_and_skipped(tmp_path) -> None:
    good = to_lines([Sample("a", {"r": "x"}, {"v": i}, i) for i in range(3)])
    path = tmp_path / "samples.lp"
    # a comment, a blank line, a bad line and a torn last line (a killed run)
    path.write_text("# header\n\n" + good + "garbage here now x\n" + "a,r=x v=")
    stats = ParseStats()
    points = read_points(path, stats)
    assert [p.fields["v"] for p in points][:3] == [0, 1, 2]
    assert stats.bad == 2
    assert stats.first_error.startswith("line 6:")


def test_parse_lines_is_lazy() -> None:
    lines = iter(["a v=1i 1", "a v=2i 2"])
    first = next(parse_lines(lines))
    assert first.fields == {"v": 1}
