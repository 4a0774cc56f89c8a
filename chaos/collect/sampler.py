"""The sampling loop: every collector, every interval, in a thread of its own.

* Ticks are on a fixed grid (start + k * interval). A tick that overruns makes the loop skip
  the grid points already past instead of running them back to back, so a slow sample never
  piles up work; the skipped ticks are counted and reported.
* Each collector runs at most every ``collector.period`` seconds (0: every tick).
* Its own cost is measured and reported as ``collector_cost`` samples: per collector
  (wall and CPU milliseconds, samples, errors) and for the whole tick (plus skipped ticks
  and lateness). CPU time is the thread's (``time.thread_time``), which includes the kernel
  time spent inside sock_diag dumps.
* A collector that raises does not stop the loop: the error is counted, logged once per
  distinct message, and reported in ``collector_cost``.
* The controller process itself (the one running the sampler) is measured every tick as a
  ``controller`` point: resident memory, CPU seconds, threads and open files, so a soak run
  can show that none of them grows (``controller=True``; ``chaos run`` turns it on).
* Each tick's samples are published on :attr:`Sampler.samples`, a :class:`SampleHook`: the
  sink, the live progress line and a sweep's stop check each subscribe to it (called in the
  sampler thread: a listener must not block, e.g. it puts them on a queue). With no
  listener they go to a bounded buffer emptied by :meth:`Sampler.drain` (oldest dropped
  first, counted).

The sampler thread holds the GIL while it digests records, in short slices between
``recvmsg`` calls (which release it); the caller's threads keep running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from chaos.collect.base import Collector
from chaos.record import schema
from chaos.record.point import FieldValue, Sample, time_ns_of

log = logging.getLogger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE")


Listener = Callable[[list[Sample]], None]


class SampleHook:
    """Where the sampler publishes each tick's samples (as Locust's ``EventHook``): every
    listener gets every batch, in the order they subscribed. A failing listener is logged
    (once per distinct error) and the others still get the batch, so a display bug never
    loses a sample for the sink. Listeners may come and go while the sampler runs."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()  # replaced, never mutated: no lock to fire
        self._errors_seen: set[str] = set()

    def subscribe(self, listener: Listener) -> None:
        self._listeners = (*self._listeners, listener)

    def unsubscribe(self, listener: Listener) -> None:
        listeners = list(self._listeners)
        listeners.remove(listener)
        self._listeners = tuple(listeners)

    @contextmanager
    def subscribed(self, listener: Listener) -> Iterator[None]:
        """``listener`` hears every batch published while the body runs."""
        self.subscribe(listener)
        try:
            yield
        finally:
            self.unsubscribe(listener)

    @property
    def listened(self) -> bool:
        return bool(self._listeners)

    def publish(self, samples: list[Sample]) -> None:
        for listener in self._listeners:
            try:
                listener(samples)
            except Exception as exc:  # one listener's bug must not stop the others
                text = f"{getattr(listener, '__qualname__', listener)}: {exc!r}"
                if text not in self._errors_seen:
                    self._errors_seen.add(text)
                    log.exception("a sample listener failed: %s", text)


@dataclass
class SamplerStats:
    ticks: int = 0
    skipped_ticks: int = 0
    errors: int = 0
    dropped: int = 0
    last_tick_ms: float = 0.0


class Sampler:
    """Run collectors every ``interval`` seconds in a daemon thread; each tick's samples are
    published on ``samples`` (a hook of the caller's, so that listeners can subscribe before
    the sampler exists, or a new one)."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        *,
        interval: float = 1.0,
        samples: SampleHook | None = None,
        buffer: int = 100_000,
        tags: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        controller: bool = False,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.collectors = list(collectors)
        self.interval = interval
        self.samples = samples if samples is not None else SampleHook()
        self.tags = dict(tags or {})
        self.stats = SamplerStats()
        self._clock = clock
        self._wall = wall
        self._buffer: deque[Sample] = deque(maxlen=buffer)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_run: dict[int, float] = {}
        self._pending_skipped = 0
        self._errors_seen: set[str] = set()
        self.controller = controller
        self._last_cpu: tuple[float, float] | None = None  # (monotonic, process CPU s)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chaos-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def final_tick(self) -> None:
        """Stop, then one last tick, published: what the sources wrote as they ended (the
        Locust master writes its last seconds when it exits)."""
        self.stop()
        self._deliver(self.tick())

    def drain(self) -> list[Sample]:
        """Take every buffered sample (only used while nothing listens to ``samples``)."""
        with self._lock:
            out = list(self._buffer)
            self._buffer.clear()
        return out

    # --- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        clock = self._clock
        next_t = clock()
        while not self._stop.is_set():
            delay = next_t - clock()
            if delay > 0 and self._stop.wait(delay):
                break
            late = max(0.0, clock() - next_t)
            samples = self.tick(late_s=late)
            self._deliver(samples)
            next_t += self.interval
            now = clock()
            if now > next_t:  # overran: drop the grid points already past
                missed = int((now - next_t) // self.interval) + 1
                next_t += missed * self.interval
                self._pending_skipped += missed
                self.stats.skipped_ticks += missed

    def _deliver(self, samples: list[Sample]) -> None:
        if self.samples.listened:
            self.samples.publish(samples)
            return
        with self._lock:
            free = self._buffer.maxlen - len(self._buffer) if self._buffer.maxlen else 0
            if len(samples) > free:
                self.stats.dropped += len(samples) - free
            self._buffer.extend(samples)

    def tick(self, late_s: float = 0.0) -> list[Sample]:
        """One round over the collectors that are due; returns their samples + costs."""
        wall = self._wall()
        stamp = time_ns_of(wall)
        mono = self._clock()
        tick_t0 = time.perf_counter()
        tick_c0 = time.thread_time()
        out: list[Sample] = []
        for index, collector in enumerate(self.collectors):
            last = self._last_run.get(index)
            period = getattr(collector, "period", 0.0) or 0.0
            # half an interval of slack so that a 10 s period on a 1 s grid means every 10th
            if last is not None and mono - last < period - self.interval / 2:
                continue
            self._last_run[index] = mono
            t0 = time.perf_counter()
            c0 = time.thread_time()
            errors = 0
            produced: list[Sample] = []
            try:
                produced = collector.sample(wall)
            except Exception as exc:
                errors = 1
                self.stats.errors += 1
                text = f"{collector.name}@{collector.netns}: {exc}"
                if text not in self._errors_seen:
                    self._errors_seen.add(text)
                    log.warning("collector failed: %s", text)
            if self.tags:
                produced = [
                    Sample(s.measurement, {**self.tags, **s.tags}, s.fields, s.time_ns)
                    for s in produced
                ]
            out.extend(produced)
            cost = {
                "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                "cpu_ms": round((time.thread_time() - c0) * 1000, 3),
                "samples": len(produced),
                "errors": errors,
            }
            own_tags = getattr(collector, "tags", None) or {}  # e.g. role, next to netns
            ctags = {
                **self.tags,
                **own_tags,
                "collector": collector.name,
                "netns": collector.netns,
            }
            out.append(Sample(schema.COLLECTOR_COST, ctags, cost, stamp))
        self.stats.ticks += 1
        duration = (time.perf_counter() - tick_t0) * 1000
        self.stats.last_tick_ms = duration
        total = {
            "duration_ms": round(duration, 3),
            "cpu_ms": round((time.thread_time() - tick_c0) * 1000, 3),
            "skipped_ticks": self._pending_skipped,
            "late_ms": round(late_s * 1000, 3),
            "interval_s": self.interval,
            "dropped": self.stats.dropped,
        }
        self._pending_skipped = 0
        own = {**self.tags, "collector": "sampler"}
        out.append(Sample(schema.COLLECTOR_COST, own, total, stamp))
        if self.controller:
            tags = {"netns": "host", **self.tags}  # the controller runs in the host namespace
            out.append(Sample(schema.CONTROLLER, tags, self._controller_fields(mono), stamp))
        return out

    def _controller_fields(self, mono: float) -> dict[str, FieldValue]:
        """This process's RSS, CPU (all threads), threads and open files: what a soak
        run must see stay flat. /proc/self/statm and os.times() cost microseconds."""
        times = os.times()
        cpu = times.user + times.system
        fields: dict[str, FieldValue] = {"cpu_s": round(cpu, 3)}
        try:
            with open("/proc/self/statm") as fh:
                fields["rss_bytes"] = int(fh.read().split()[1]) * _PAGE
            fields["fds"] = len(os.listdir("/proc/self/fd"))
        except OSError:  # not Linux: CPU only
            pass
        fields["threads"] = threading.active_count()
        if self._last_cpu is not None and mono > self._last_cpu[0]:
            pct = 100.0 * (cpu - self._last_cpu[1]) / (mono - self._last_cpu[0])
            fields["cpu_pct"] = round(pct, 2)
        self._last_cpu = (mono, cpu)
        return fields

    def close_collectors(self) -> None:
        for collector in self.collectors:
            try:
                collector.close()
            except Exception:
                log.exception("closing %s failed", collector.name)
