"""The live progress line: a listener of the sampler's samples, compact lines off a terminal."""

from __future__ import annotations

import io
import time

from rich.console import Console

from chaos.collect.sampler import SampleHook
from chaos.progress import Progress, live_progress
from chaos.record.point import Sample


class _Sink:
    def __init__(self) -> None:
        self.got: list[Sample] = []

    def write(self, samples: list[Sample]) -> None:
        self.got.extend(samples)


def test_line_shows_rate_errors_states_and_targets() -> None:
    now = [100.0]
    progress = Progress(60, rate_steps=[50, 100], step_duration=10, clock=lambda: now[0])
    progress.observe([
        Sample("load", {"role": "client"}, {"started": 852, "completed": 850, "failed": 5}, 0),
        Sample("load_failures", {"class": "EADDRNOTAVAIL"}, {"count": 5}, 0),
    ])  # fmt: skip
    progress.observe([
        Sample("load", {"role": "client"}, {"started": 48, "completed": 46, "failed": 2}, 10**9),
        Sample("load_failures", {"class": "EADDRNOTAVAIL"}, {"count": 2}, 10**9),
        Sample("tcp_states", {"family": "all", "role": "proxy"}, {"time_wait": 1500}, 0),
        Sample("tcp_zombies", {"role": "origin"}, {"candidates": 3}, 0),
        Sample("port_budget_summary", {"role": "proxy"}, {"max_utilisation": 0.5}, 0),
        Sample("controller", {}, {"rss_bytes": 64 * 2**20}, 0),
    ])  # fmt: skip
    now[0] += 12
    text = progress.line().plain
    assert text.startswith("0:12/1:00 (-0:48)")
    assert "rate 48/s of 100" in text and "conns 900" in text  # the latest second; all started
    assert "errors 7 (EADDRNOTAVAIL 7)" in text
    assert "TW p1.5k" in text and "zombies o3" in text and "ports 50%" in text
    assert "rss 64M" in text


def test_off_a_terminal_lines_are_printed_and_the_listener_removed() -> None:
    sink, buffer = _Sink(), io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    samples = SampleHook()
    samples.subscribe(sink.write)
    progress = Progress(10)
    with live_progress(samples, console, progress, every=0.05):
        samples.publish([Sample("load", {}, {"started": 3, "completed": 3, "failed": 0}, 0)])
        time.sleep(0.2)
    assert len(sink.got) == 1  # the sink got the samples too
    assert "write" not in vars(sink)  # nothing patched the sink
    samples.publish([Sample("load", {}, {"started": 5, "completed": 5, "failed": 0}, 0)])
    assert progress.connections == 3 and len(sink.got) == 2  # progress no longer listens
    assert "conns 3" in buffer.getvalue()


def test_listeners_each_get_every_batch_and_a_failing_one_stops_none() -> None:
    sink, seen = _Sink(), []
    samples = SampleHook()

    def broken(batch: list[Sample]) -> None:
        raise RuntimeError("display bug")

    samples.subscribe(broken)
    samples.subscribe(sink.write)
    with samples.subscribed(lambda s: seen.append(("outer", len(s)))):
        with samples.subscribed(lambda s: seen.append(("inner", len(s)))):
            samples.publish([Sample("load", {}, {"started": 1}, 0)])
        samples.publish([])
    samples.publish([])
    assert seen == [("outer", 1), ("inner", 1), ("outer", 0)] and len(sink.got) == 1
