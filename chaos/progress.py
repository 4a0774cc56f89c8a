"""Live progress of a run: elapsed and remaining time, rate, errors and key socket counts.

Fed by the samples the sampler publishes anyway (a listener on its
:class:`~chaos.collect.sampler.SampleHook`, beside the sink), so it adds no collector and no
sampling cost. The rate, connections and errors come from the per-second
``load`` series (``load_failures`` for the classes), on the run's own clock, ~2 s behind.

On a terminal it is one status line refreshed every second
(rich ``Live``, removed at the end); elsewhere (CI logs, pipes) a compact line is printed
every ``every`` seconds instead, so logs stay readable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.text import Text

from chaos.collect.sampler import SampleHook
from chaos.record.point import Sample
from chaos.record.schema import (
    CONTROLLER,
    LOAD,
    LOAD_FAILURES,
    PORT_BUDGET_SUMMARY,
    PROCESS,
    TCP_STATES,
    TCP_ZOMBIES,
    is_family_total,
)

ROLE_LETTERS = {"client": "c", "gateway": "g", "proxy": "p", "origin": "o"}


def _si(value: float) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.1f}{unit}"
    return f"{value:.0f}"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m")
    )


class Progress:
    """The latest value of each key count, updated from the sampler thread."""

    def __init__(
        self,
        duration: float,
        rate_steps: list[float] | None = None,
        step_duration: float = 0.0,
        rate: float | None = None,
        active_faults: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.duration = duration
        self.rate_steps = list(rate_steps or [])
        self.step_duration = step_duration
        self.rate = rate
        self.active_faults = active_faults
        self._clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self.last_rate = 0.0  # connections started in the latest second of the load series
        self.connections = 0  # connections started so far
        self.failures = 0
        self.failure_classes: dict[str, int] = {}  # error class -> running total
        self.states: dict[tuple[str, str], float] = {}  # (role, state) -> count
        self.zombies: dict[str, float] = {}
        self.ports = 0.0
        self.proxy_busy: float | None = None
        self.rss: float | None = None

    # --- a listener of the sampler (its thread) ----------------------------------------------

    def observe(self, samples: list[Sample]) -> None:
        with self._lock:
            ports = None
            for s in samples:
                m, tags, fields = s.measurement, s.tags, s.fields
                role = tags.get("role", "")
                if m == LOAD:  # one point per second, written once
                    started = int(fields.get("started", 0))  # type: ignore[arg-type]
                    self.last_rate = float(started)
                    self.connections += started
                    self.failures += int(fields.get("failed", 0))  # type: ignore[arg-type]
                elif m == LOAD_FAILURES and "count" in fields:
                    name = tags.get("class", "")
                    count = int(fields["count"])  # type: ignore[arg-type]
                    self.failure_classes[name] = self.failure_classes.get(name, 0) + count
                elif m == TCP_STATES and is_family_total(tags):
                    for state in ("time_wait", "close_wait", "established"):
                        if state in fields:
                            self.states[(role, state)] = float(fields[state])  # type: ignore[arg-type]
                elif m == TCP_ZOMBIES and "candidates" in fields:
                    self.zombies[role] = float(fields["candidates"])  # type: ignore[arg-type]
                elif m == PORT_BUDGET_SUMMARY and "max_utilisation" in fields:
                    value = float(fields["max_utilisation"])  # type: ignore[arg-type]
                    ports = value if ports is None else max(ports, value)
                elif m == PROCESS and role == "proxy" and "busy" in fields:
                    self.proxy_busy = float(fields["busy"])  # type: ignore[arg-type]
                elif m == CONTROLLER and "rss_bytes" in fields:
                    self.rss = float(fields["rss_bytes"])  # type: ignore[arg-type]
            if ports is not None:
                self.ports = ports

    # --- rendering ---------------------------------------------------------------------------

    def target(self, elapsed: float) -> float | None:
        if self.rate_steps:
            index = min(int(elapsed / max(self.step_duration, 1e-9)), len(self.rate_steps) - 1)
            return self.rate_steps[max(index, 0)]
        return self.rate

    def line(self) -> Text:
        with self._lock:
            rps, requests, failures = self.last_rate, self.connections, self.failures
            elapsed = self._clock() - self.started
            text = Text()
            text.append(f"{_clock(elapsed)}/{_clock(self.duration)}", "bold")
            text.append(f" (-{_clock(self.duration - elapsed)})")
            target = self.target(elapsed)
            text.append("  rate ")
            text.append(f"{rps:,.0f}/s", "bold")
            if target:
                text.append(f" of {target:g}")
            text.append(f"  conns {requests:,}")
            text.append("  errors ")
            text.append(f"{failures:,}", "bold red" if failures else "green")
            classes = sorted(self.failure_classes.items(), key=lambda kv: -kv[1])[:3]
            if classes:
                text.append(" (" + ", ".join(f"{k} {_si(v)}" for k, v in classes) + ")")
            for state, label in (("time_wait", "TW"), ("close_wait", "CW")):
                per_role = [
                    f"{ROLE_LETTERS.get(r, r)}{_si(v)}"
                    for (r, s), v in sorted(self.states.items())
                    if s == state and v
                ]
                text.append(f"  {label} " + (" ".join(per_role) if per_role else "0"))
            zombies = [
                f"{ROLE_LETTERS.get(r, r)}{_si(v)}" for r, v in sorted(self.zombies.items()) if v
            ]
            text.append("  zombies " + (" ".join(zombies) if zombies else "0"))
            text.append(f"  ports {self.ports:.0%}")
            if self.proxy_busy is not None:
                text.append(f"  proxy cpu {self.proxy_busy:.0%}")
            if self.active_faults is not None:
                text.append(f"  faults {self.active_faults()}")
            if self.rss is not None:
                text.append(f"  rss {self.rss / 1048576:.0f}M", "dim")
            return text


@contextmanager
def live_progress(
    samples: SampleHook,
    console: Console,
    progress: Progress,
    *,
    every: float = 10.0,
    enabled: bool = True,
) -> Iterator[Progress]:
    """Show ``progress`` while the body runs, fed by what the sampler publishes on
    ``samples`` while it runs."""
    if not enabled:
        yield progress
        return
    stop = threading.Event()
    with samples.subscribed(progress.observe):
        if console.is_terminal:
            from rich.live import Live

            with Live(
                get_renderable=progress.line,
                console=console,
                refresh_per_second=1,
                transient=True,
            ):
                yield progress
        else:

            def lines() -> None:
                while not stop.wait(every):
                    console.print(progress.line(), soft_wrap=True)

            thread = threading.Thread(target=lines, name="chaos-progress", daemon=True)
            thread.start()
            try:
                yield progress
            finally:
                stop.set()
                thread.join(2)
