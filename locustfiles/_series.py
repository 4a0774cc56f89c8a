"""The per-second load series, Locust side: the workers record, the master merges and writes.

Every process that runs users has one :data:`RECORDER`. The users' hot path only appends
``perf_counter()`` stamps to its lists (a few tens of nanoseconds); once a second, just after
each wall-clock second ends, a greenlet turns what was appended into per-second counts and
HdrHistograms in microseconds (:class:`chaos.load.series.Second`) and sends the seconds that
are over to the master with Locust's worker-to-master messages (``runner.send_message``: it
works for workers on other machines, over the same connection as Locust's own reports). The
master (:class:`SeriesWriter`) merges the workers' reports of each second and appends the
second to ``--series-file`` once every worker has reported it, or 5 s after it ended (a
stopped or lost worker does not hold the series back; what it sends later is merged into the
next second still unwritten and counted in its ``late`` field). A local (single-process) run
records and writes in the same process.

Why not Locust's stats: they are in whole milliseconds, the master's per-second view is ~5 s
late, and every extra request event costs a few microseconds in the hot path. The users fire
exactly one request event per connection; everything else travels here.

Standalone like ``_common.py``: imports the stdlib-only ``chaos.load.series`` and nothing else
of ``chaos``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from _contract import series
from locust import events
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("locustfiles.series")

MESSAGE = "chaos_load_series"
MASTER_WAIT_S = 5  # a second is written at the latest this long after it ended
FINAL_REPORTS_WAIT_S = 5.0  # at the end, how long the master waits for every worker's last word
FLUSH_MARGIN_S = 0.02  # wake this long after the wall-clock second ended


# --------------------------------------------------------------------------- recording
class _Pending:
    """A second being filled from the hot path's stamps (values in microseconds)."""

    __slots__ = ("completed", "failed", "failures", "started", *series.PHASES)

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.failures: dict[str, int] = {}
        self.connect: list[int] = []
        self.tls: list[int] = []
        self.first_byte: list[int] = []
        self.total: list[int] = []
        self.close: list[int] = []


class Recorder:
    """Stamps from the users, turned into :class:`series.Second` once a second.

    The users call ``starts.append(t0)`` when connect() begins, ``connects.append((t0, t1))``
    when it succeeded and ``ends.append((t0, t2, tf, t3, t4, failure))`` when the connection
    is over (``perf_counter()`` values; 0 for a phase that did not happen: t2 request sent, tf
    first byte, t3 response complete, t4 closed; ``failure`` None or an exception whose
    ``str`` is its class); with TLS, ``handshakes.append((th, tt))`` when a TLS handshake
    began and completed (phase ``tls``). The lists are swapped out whole by :meth:`take`, so
    the users must look them up on the recorder each time (``RECORDER.ends.append``), not
    keep them.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.connects: list[tuple[float, float]] = []
        self.handshakes: list[tuple[float, float]] = []
        self.ends: list[tuple[float, float, float, float, float, Any]] = []
        self.offset = time.time() - time.perf_counter()  # wall = perf + offset
        self.pending: dict[int, _Pending] = {}
        self.next = 0  # first second not yet sent

    def reset(self) -> None:
        """A new test: forget what an earlier one left (workers are reused by a web UI)."""
        self.__init__()  # type: ignore[misc]
        self.next = int(time.time())

    def now(self) -> float:
        return time.perf_counter() + self.offset

    def _second(self, sec: int) -> _Pending:
        found = self.pending.get(sec)
        if found is None:
            found = self.pending[sec] = _Pending()
        return found

    def _add_phase(self, phase: str, stamps: list[tuple[float, float]]) -> None:
        """``(start, end)`` stamps into ``phase``, each by the second it ended."""
        offset = self.offset
        current = -1
        values: list[int] = []
        for start, end in stamps:
            sec = int(end + offset)
            if sec != current:
                current, values = sec, getattr(self._second(sec), phase)
            values.append(int((end - start) * 1_000_000))

    def _absorb(self) -> None:
        # Once a second over a few thousand stamps: loops kept flat (no call per stamp), and
        # the second's _Pending looked up only when the second changes (stamps come in order,
        # nearly).
        starts, self.starts = self.starts, []
        connects, self.connects = self.connects, []
        handshakes, self.handshakes = self.handshakes, []
        ends, self.ends = self.ends, []
        offset = self.offset
        second = self._second
        for sec, count in Counter([int(t0 + offset) for t0 in starts]).items():
            second(sec).started += count
        self._add_phase("connect", connects)
        self._add_phase("tls", handshakes)
        current = -1
        pending = _Pending()
        total, first_byte, close = pending.total, pending.first_byte, pending.close
        for t0, t2, tf, t3, t4, failure in ends:
            sec = int(t4 + offset)
            if sec != current:
                current = sec
                pending = second(sec)
                total, first_byte, close = pending.total, pending.first_byte, pending.close
            total.append(int((t4 - t0) * 1_000_000))
            if tf:
                first_byte.append(int((tf - t2) * 1_000_000))
            if failure is None:
                pending.completed += 1
                if t3:
                    close.append(int((t4 - t3) * 1_000_000))
            else:
                pending.failed += 1
                name = str(failure)
                pending.failures[name] = pending.failures.get(name, 0) + 1

    def take(self, upto: int, users: int) -> list[series.Second]:
        """The seconds up to ``upto`` (included) not yet taken, each one whether or not
        anything happened in it; late stamps of earlier seconds come back under their own
        second (the master decides what to do with them)."""
        self._absorb()
        out = []
        for sec in sorted(s for s in self.pending if s < self.next):
            out.append(self._build(sec, self.pending.pop(sec), users))
        for sec in range(self.next, upto + 1):
            out.append(self._build(sec, self.pending.pop(sec, None), users))
        self.next = max(self.next, upto + 1)
        return out

    @staticmethod
    def _build(sec: int, pending: _Pending | None, users: int) -> series.Second:
        second = series.Second(t=sec, users=users, workers=1)
        if pending is not None:
            second.started = pending.started
            second.completed = pending.completed
            second.failed = pending.failed
            second.failures = pending.failures
            for phase in series.PHASES:
                values = getattr(pending, phase)
                if values:
                    series.record_values(second.histogram(phase), values)
        return second


RECORDER = Recorder()


# --------------------------------------------------------------------------- writing (master)
class SeriesWriter:
    """The master's (or a local run's) merge of the workers' seconds into the series file."""

    def __init__(self, environment: Environment, path: str) -> None:
        self.environment = environment
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a")  # noqa: SIM115 - closed in close(); appended by a web UI rerun
        self.pending: dict[int, series.Second] = {}
        self.reported: dict[str, float] = {}  # worker -> last second it reported (inf: done)
        self.written = -1  # last second written

    def new_test(self, environment: Environment) -> None:
        self.environment = environment
        self.reported = {}

    def receive(self, worker: str, seconds: list[series.Second], upto: int, final: bool) -> None:
        for second in seconds:
            if second.t <= self.written:  # its second is written: into the next one, as late
                second.late = second.completed + second.failed
                second.t = self.written + 1
                second.users = 0
            found = self.pending.get(second.t)
            if found is None:
                self.pending[second.t] = second
            else:
                found.merge(second)
        self.reported[worker] = float("inf") if final else max(self.reported.get(worker, -1), upto)
        self.write_ready()

    def _workers(self) -> list[str]:
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            return [node.id for node in runner.clients.all if node.state != "missing"]
        return list(self.reported) or ["local"]

    def write_ready(self, final: bool = False) -> None:
        """Write every second all workers have reported (or that ended MASTER_WAIT_S ago);
        ``final``: everything."""
        if not self.pending:
            return
        if final:
            ready = max(self.pending)
        else:
            reported = [self.reported.get(worker, -1) for worker in self._workers()]
            ready = max(min(reported, default=-1), int(time.time()) - 1 - MASTER_WAIT_S)
        for sec in sorted(s for s in self.pending if s <= ready):
            second = self.pending.pop(sec)
            self.file.write(second.to_line())
            self.written = max(self.written, sec)
        self.file.flush()

    def run(self) -> None:
        while True:
            gevent.sleep(1.0)
            self.write_ready()

    def close(self) -> None:
        if not self.file.closed:
            self.write_ready(final=True)
            self.file.close()


class _State:
    writer: SeriesWriter | None = None
    writer_greenlet: gevent.Greenlet | None = None
    flusher: gevent.Greenlet | None = None
    deliver: Callable[[list[series.Second], int, bool], None] | None = None


STATE = _State()


def _users(environment: Environment) -> int:
    runner = environment.runner
    return int(runner.user_count) if runner is not None else 0


def _flush(environment: Environment, upto: int, final: bool = False) -> None:
    seconds = RECORDER.take(upto, _users(environment))
    if STATE.deliver is not None and (seconds or final):
        STATE.deliver(seconds, upto, final)


def _flush_every_second(environment: Environment) -> None:
    while True:
        now = RECORDER.now()
        gevent.sleep(int(now) + 1 - now + FLUSH_MARGIN_S)
        try:
            _flush(environment, int(RECORDER.now()) - 1)
        except Exception:  # never kill the flusher over one second
            log.exception("could not send the load series")


def _deliverer(environment: Environment) -> Callable[[list[series.Second], int, bool], None]:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):

        def send(seconds: list[series.Second], upto: int, final: bool) -> None:
            data = {"upto": upto, "final": final, "seconds": [s.to_json() for s in seconds]}
            runner.send_message(MESSAGE, data)

        return send

    def local(seconds: list[series.Second], upto: int, final: bool) -> None:
        if STATE.writer is not None:
            STATE.writer.receive("local", seconds, upto, final)

    return local


def _on_message(environment: Environment, msg: Any, **_: Any) -> None:
    writer = STATE.writer
    if writer is None:
        return
    data = msg.data or {}
    seconds = [series.Second.from_json(item) for item in data.get("seconds") or ()]
    writer.receive(msg.node_id, seconds, int(data.get("upto", -1)), bool(data.get("final")))


def start(environment: Environment, path: str) -> None:
    """At test_start: the writer (master/local with a path), the recorder and its flusher
    (workers and local runs)."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner) and path:
        if STATE.writer is None:
            STATE.writer = SeriesWriter(environment, path)
            STATE.writer_greenlet = gevent.spawn(STATE.writer.run)
        else:
            STATE.writer.new_test(environment)
    if isinstance(runner, MasterRunner):
        return
    RECORDER.reset()
    STATE.deliver = _deliverer(environment)
    if STATE.flusher is None or STATE.flusher.dead:
        STATE.flusher = gevent.spawn(_flush_every_second, environment)


def stop(environment: Environment) -> None:
    """At test_stop (after the users were stopped): the last, partial second goes out."""
    if isinstance(environment.runner, MasterRunner):
        return
    if STATE.flusher is not None:
        STATE.flusher.kill(block=False)
        STATE.flusher = None
    _flush(environment, int(RECORDER.now()), final=True)


def close() -> None:
    """At quitting: on the master the workers' final reports are in; write what is left."""
    if STATE.writer_greenlet is not None:
        STATE.writer_greenlet.kill(block=False)
        STATE.writer_greenlet = None
    if STATE.writer is not None:
        STATE.writer.close()
        STATE.writer = None


@events.init.add_listener
def _register(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(MESSAGE, _on_message)


def _quit_after_the_workers(self: MasterRunner) -> None:
    """MasterRunner.quit, waiting for the workers' last reports.

    Locust's master tells its workers to quit and gives them 0.5 s before it stops listening;
    a worker on a busy machine answers later, and its last second of the series (and its last
    stats report, so Locust's own totals) is lost. A worker says "quit" to the master after
    both, so the master waits until every worker has, at most FINAL_REPORTS_WAIT_S."""
    self.stop(send_stop_to_client=False)
    for client in self.clients.all:
        self.server.send_to_client(Message("quit", None, client.id))
    deadline = time.monotonic() + FINAL_REPORTS_WAIT_S
    while time.monotonic() < deadline and any(c.state != "missing" for c in self.clients.all):
        gevent.sleep(0.05)
    gevent.sleep(0.1)  # anything right behind the last "quit"
    self.greenlet.kill(block=True)


MasterRunner.quit = _quit_after_the_workers  # type: ignore[method-assign]
