"""Shared by the locustfiles: rate control (pacing, shared token bucket, step ramps), the
per-second rate and failure-class CSVs, and failure classes whose ``repr`` is a short class name.

Standalone on purpose: no import of the ``chaos`` package (locust monkey-patches the process
with gevent before this module is imported). Locust skips files starting with ``_`` when it is
given a directory, so this module is never mistaken for a locustfile.

Options registered here (shared by every locustfile that imports this module; names, defaults
and help are in ``chaos/load/contract.py``, the one definition the controller uses too):

``--rate R``             target new connections (tasks) per second for the whole test; 0 = unpaced
``--rate-mode M``        ``per-user`` (default): each user is paced on its own schedule at
                         ``R / workers / users_on_this_process`` (like ``constant_pacing``: start
                         times are scheduled, not sleep-after-work); ``shared``: one GCRA token
                         bucket per process, each process gets ``R / workers``
``--rate-steps LIST``    e.g. ``500,1000,2000``: the target changes every ``--step-seconds``
                         (measured from test start) and stays at the last step; overrides --rate
``--step-seconds S``     length of one step (default 10)
``--source-addresses``   comma list of local addresses, spread round-robin over connections
``--connect-timeout S``  seconds
``--workers-hint N``     number of worker processes sharing the rate. 0 (default) = automatic:
                         the master writes its connected worker count into the options it sends
                         to workers at test start; a local run counts as 1
``--rate-csv PATH``      master/local only: one row per second
                         ``time,elapsed_s,target_rate,achieved_rate,failures,users``
``--rate-entry NAME``    stats entry counted as "achieved" (default ``connection``; empty = all)
``--failures-csv PATH``  master/local only: failures per error class and second, one row per
                         class and second once the class has appeared:
                         ``time,elapsed_s,class,count,total``
``--series-file PATH``   master/local only: the per-second load series (``_series.py``)
``--http-path PATH``     request path of the HTTP users (here because both locustfiles use it)
"""

from __future__ import annotations

import csv
import errno
import logging
import random
import time
from typing import Any

import _series
import gevent
from _contract import contract, register_options
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsCSVFileWriter, StatsError

log = logging.getLogger("locustfiles")

# Attribute the master adds to its parsed options so that workers learn the worker count (Locust
# forwards every non-default option in each "spawn" message).
WORKERS_ATTR = "chaos_workers_auto"


# --------------------------------------------------------------------------- failure classes
class TcpFailure(Exception):
    """A failure reported through the request event.

    Locust groups its failure table by ``repr(exception)`` (and sends only that string from
    workers to the master), so ``repr`` is the bare name, e.g. ``ECONNREFUSED``.
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name or type(self).__name__)

    def __repr__(self) -> str:
        return self.args[0]

    __str__ = __repr__


class ConnectTimeout(TcpFailure):
    """connect() did not finish within --connect-timeout."""


class ReadTimeout(TcpFailure):
    """No progress on a read (response or FIN) within --read-timeout."""


class SlowConnect(TcpFailure):
    """connect() took longer than --slow-connect-ms (port exhaustion shows up first as this)."""


class IncompleteResponse(TcpFailure):
    """The peer closed before a full response arrived."""


class BadResponse(TcpFailure):
    """A response that does not parse (e.g. bad HTTP status line)."""


_errno_failures: dict[int | None, TcpFailure] = {}


def errno_failure(exc: OSError) -> TcpFailure:
    """The shared failure instance for an OSError, named after its errno (ECONNRESET, ...).

    Instances are cached: they are only reported, never raised, so sharing them is safe and
    keeps the failure path allocation-free.
    """
    code = exc.errno
    failure = _errno_failures.get(code)
    if failure is None:
        # No errno: e.g. a TimeoutError; use its class name.
        name = type(exc).__name__ if code is None else errno.errorcode.get(code, f"ERRNO{code}")
        failure = _errno_failures[code] = TcpFailure(name)
    return failure


# --------------------------------------------------------------------------- options
@events.init_command_line_parser.add_listener
def _add_common_arguments(parser: Any) -> None:
    register_options(parser, contract.COMMON)


@events.init.add_listener
def _tune_locust(environment: Environment, **_: Any) -> None:
    import locust.runners
    import locust.stats

    # Per-second history rows reach the CSV (and the run's sink) within a second, not 5.
    locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1
    # The hub's cached "now" dates from when gevent was imported; a local headless run arms
    # its --run-time timer before the loop first runs, so without this the run ends early
    # by the time the imports took (seconds on a busy machine).
    gevent.get_hub().loop.update_now()
    liveness = opt(environment, "heartbeat_liveness")
    if liveness:
        # Read by the master whenever a worker (re)appears: a stopped worker stays counted.
        locust.runners.HEARTBEAT_LIVENESS = liveness


def opt(environment: Environment, name: str, default: Any = None) -> Any:
    """An option from the parsed command line, or its default when run without one (the
    contract's default when ``default`` is None)."""
    if default is None:
        default = contract.default(name)
    options = environment.parsed_options
    return default if options is None else getattr(options, name, default)


# --------------------------------------------------------------------------- rate control
class RateControl:
    """Target rate over time and this process's share of it.

    One instance per process per test (rebuilt at every test_start). ``reserve_shared`` is a
    GCRA: each caller reserves the next free slot, so N users together produce exactly the
    process share, with no burst debt when they fall behind.
    """

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.rate = float(opt(environment, "rate"))
        self.steps = contract.parse_rate_steps(str(opt(environment, "rate_steps") or ""))
        self.step_seconds = max(float(opt(environment, "step_seconds")), 0.001)
        self.mode = str(opt(environment, "rate_mode"))
        self.workers = self._worker_count(environment)
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._next_slot = 0.0

    @staticmethod
    def _worker_count(environment: Environment) -> int:
        hint = int(opt(environment, "workers_hint") or 0)
        if hint > 0:
            return hint
        runner = environment.runner
        if isinstance(runner, MasterRunner):
            return max(runner.worker_count, 1)
        if isinstance(runner, WorkerRunner):
            return max(int(opt(environment, WORKERS_ATTR, 1) or 1), 1)
        return 1

    @property
    def paced(self) -> bool:
        return self.rate > 0 or bool(self.steps)

    def target_rate(self, now: float | None = None) -> float:
        """Whole-test target (all workers) at monotonic time ``now``."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return contract.target_rate(elapsed, self.rate, self.steps, self.step_seconds)

    def target_rate_at_wall(self, wall: float) -> float:
        return self.target_rate(self.started + (wall - self.started_wall))

    def process_rate(self, now: float) -> float:
        return self.target_rate(now) / self.workers

    def reserve_shared(self) -> float:
        """Seconds to wait before the next connection of this process (0 if unpaced)."""
        now = time.monotonic()
        rate = self.process_rate(now)
        if rate <= 0:
            return 0.0
        slot = self._next_slot if self._next_slot > now else now
        self._next_slot = slot + 1.0 / rate
        return slot - now

    def user_interval(self, now: float) -> float:
        """Per-user interval in per-user mode (0 if unpaced)."""
        rate = self.process_rate(now)
        if rate <= 0:
            return 0.0
        runner = self.environment.runner
        users = getattr(runner, "target_user_count", 0) or (runner.user_count if runner else 1)
        return max(users, 1) / rate


class _State:
    """Per-process state shared by all users of a locustfile."""

    def __init__(self) -> None:
        self.rate: RateControl | None = None
        # option name -> its per-second CSV writer and the greenlet running it
        self.csv_writers: dict[str, tuple[PerSecondCsv, gevent.Greenlet]] = {}


STATE = _State()


def rate_control(environment: Environment) -> RateControl:
    """The process's RateControl (built lazily for environments that never fired test_start)."""
    control = STATE.rate
    if control is None or control.environment is not environment:
        control = STATE.rate = RateControl(environment)
    return control


class Pacer:
    """Per-user pacing helper: call ``first_delay()`` once, then ``delay()`` after each task."""

    __slots__ = ("environment", "slot")

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.slot = 0.0

    def first_delay(self) -> float:
        control = rate_control(self.environment)
        if not control.paced:
            return 0.0
        if control.mode == "shared":
            return control.reserve_shared()
        # A random phase within one interval: users spawned together do not fire in lockstep.
        now = time.monotonic()
        delay = random.random() * control.user_interval(now)
        self.slot = now + delay
        return delay

    def delay(self) -> float:
        control = STATE.rate or rate_control(self.environment)
        if control.mode == "shared":
            return control.reserve_shared() if control.paced else 0.0
        now = time.monotonic()
        interval = control.user_interval(now)
        if interval <= 0:
            return 0.0
        # Scheduled start times (constant pacing): a late task does not shift the schedule,
        # but a backlog of more than one interval is dropped rather than burst out.
        slot = self.slot + interval
        if slot < now:
            slot = now
        self.slot = slot
        return slot - now


# --------------------------------------------------------------------------- per-second CSVs
class PerSecondCsv:
    """A CSV with rows per wall-clock second, written by a greenlet on the master (or the
    local process).

    Per-second counts come from stats entries' per-second buckets, which workers report with
    their own timestamps and the master merges; rows are therefore written with a lag (a bit
    more than Locust's 3 s worker report interval on a master) so that each second is complete.
    """

    FIELDS: tuple[str, ...] = ()

    def __init__(self, environment: Environment, path: str) -> None:
        self.environment = environment
        self.lag = 5 if isinstance(environment.runner, MasterRunner) else 1
        self.first = int(time.time())
        self.next = self.first
        self.file = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.FIELDS)
        self.file.flush()

    def new_test(self, environment: Environment) -> None:
        """A new test in the same process (web UI): keep appending to the same file."""
        self.environment = environment

    def tick(self) -> None:
        """Called once a second before the flush (sample what has no per-second bucket)."""

    def write_seconds(self, upto: int, final: bool) -> None:
        """Write the rows of seconds ``self.next .. upto`` and advance ``self.next``."""
        raise NotImplementedError

    def flush(self, upto: int, final: bool = False) -> None:
        self.write_seconds(upto, final)
        self.file.flush()

    def run(self) -> None:
        while True:
            self.tick()
            gevent.sleep(1.0)
            self.flush(int(time.time()) - self.lag)

    def close(self) -> None:
        if not self.file.closed:
            self.flush(int(time.time()), final=True)  # called at quitting: counts are final
            self.file.close()


def find_entry(environment: Environment, name: str) -> Any:
    """The stats entry named ``name`` (any method); ``stats.total`` for an empty name."""
    stats = environment.stats
    if not name:
        return stats.total
    for (entry_name, _method), entry in stats.entries.items():
        if entry_name == name:
            return entry
    return None


class RateCsvWriter(PerSecondCsv):
    """One row per second: target beside achieved rate."""

    FIELDS = ("time", "elapsed_s", "target_rate", "achieved_rate", "failures", "users")

    def __init__(self, environment: Environment, path: str) -> None:
        super().__init__(environment, path)
        self.control = RateControl(environment)
        self.entry = str(opt(environment, "rate_entry") or "")
        self.users: dict[int, int] = {}  # second -> running users, sampled by tick()
        self.last_users = 0

    def new_test(self, environment: Environment) -> None:
        super().new_test(environment)
        self.control = RateControl(environment)

    def tick(self) -> None:
        runner = self.environment.runner
        if runner is not None and runner.state not in ("stopping", "stopped"):
            self.users[int(time.time())] = runner.user_count

    def write_seconds(self, upto: int, final: bool) -> None:
        entry = find_entry(self.environment, self.entry)
        reqs = entry.num_reqs_per_sec if entry is not None else {}
        fails = entry.num_fail_per_sec if entry is not None else {}
        while self.next <= upto:
            second = self.next
            users = self.last_users = self.users.pop(second, self.last_users)
            self.writer.writerow(
                (
                    second,
                    second - self.first,
                    f"{self.control.target_rate_at_wall(second + 0.5):g}",
                    reqs.get(second, 0),
                    fails.get(second, 0),
                    users,
                )
            )
            self.next += 1


def share_out(count: int, pool: dict[str, int]) -> dict[str, int]:
    """Split ``count`` (at most the pool's sum) over the pool's classes in proportion to what
    each holds, in whole numbers (largest remainder), never more than a class holds."""
    held = sum(pool.values())
    count = min(count, held)
    if count <= 0:
        return {}
    if count == held:
        return dict(pool)
    exact = {name: count * n / held for name, n in pool.items()}
    out = {name: int(share) for name, share in exact.items()}
    left = count - sum(out.values())
    for name in sorted(exact, key=lambda c: out[c] - exact[c])[:left]:
        out[name] += 1
    return out


# error class -> [failures not yet placed, first second seen, last second seen]
ClassWindows = dict[str, list[int]]


def place_failures(failed: dict[int, int], classes: ClassWindows) -> dict[int, dict[str, int]]:
    """Split one entry's failures per second (no class) into classes (no second) for one
    batch of failures (one worker report).

    Each second takes failures from the classes seen in that second, those whose window ends
    first before the others (so a class is not starved later), classes with the same end in
    proportion. Exact when the classes' windows do not overlap, which is the usual case: a
    fault changes how connections fail. What no second could take (counts that disagree)
    goes to the class's last second, so every failure is placed once. ``classes`` is used up.
    """
    out: dict[int, dict[str, int]] = {}
    for second in sorted(failed):
        need = failed[second]
        seen = [c for c, (n, first, last) in classes.items() if n and first <= second <= last]
        for end in sorted({classes[c][2] for c in seen}):
            if need <= 0:
                break
            group = {c: classes[c][0] for c in seen if classes[c][2] == end}
            for name, n in share_out(need, group).items():
                row = out.setdefault(second, {})
                row[name] = row.get(name, 0) + n
                classes[name][0] -= n
                need -= n
    for name, (n, _first, last) in classes.items():
        if n:
            row = out.setdefault(last, {})
            row[name] = row.get(name, 0) + n
            classes[name][0] = 0
    return out


class FailureCsvWriter(PerSecondCsv):
    """One row per error class and second: failures of that class in that second, and the
    class's running total. A class gets a row every second from its first failure on (count 0
    when it had none), so a plot of it drops to zero rather than interpolating over gaps.

    Why not the request event: on a master it never fires (workers send aggregates), and a
    listener on every request of a worker costs CPU in the hot path. Each worker report
    carries, per entry, failures per second (no class) and, per class, occurrences with the
    first and last time seen (no per-second split); :func:`place_failures` puts the two
    together, once per report. A local run has no reports: each second, the growth of
    ``stats.errors`` and of the entries' per-second failures since the last second is one
    batch. Totals equal Locust's failures CSV (every reported failure is placed once);
    nothing here runs per request.
    """

    FIELDS = ("time", "elapsed_s", "class", "count", "total")

    def __init__(self, environment: Environment, path: str) -> None:
        super().__init__(environment, path)
        self.placed: dict[int, dict[str, int]] = {}  # second -> class -> failures
        self.totals: dict[str, int] = {}  # class -> failures written, by first appearance
        self.master = isinstance(environment.runner, MasterRunner)
        if self.master:
            environment.events.worker_report.add_listener(self._on_worker_report)
        # local runs: what the last batch already took
        self._last_tick = time.time()
        self._seen_errors: dict[str, int] = {}  # StatsError key -> occurrences
        self._seen_fails: dict[tuple[str, str], dict[int, int]] = {}  # entry -> second -> n

    def new_test(self, environment: Environment) -> None:
        super().new_test(environment)
        self._seen_errors, self._seen_fails = {}, {}  # the new test's stats start at 0

    def _add_batch(
        self, failed: dict[tuple[str, str], dict[int, int]], errors: dict[Any, ClassWindows]
    ) -> None:
        for key, classes in errors.items():
            for second, counts in place_failures(failed.get(key, {}), classes).items():
                # A second already written (a late report) goes into the next one to write.
                row = self.placed.setdefault(max(second, self.next), {})
                for name, n in counts.items():
                    row[name] = row.get(name, 0) + n

    def _on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        errors: dict[Any, ClassWindows] = {}
        for error in (data.get("errors") or {}).values():
            first = int(error.get("first_seen") or 0) or int(time.time())
            last = int(error.get("last_seen") or 0) or first
            classes = errors.setdefault((error["name"], error["method"]), {})
            window = classes.setdefault(error["error"], [0, first, last])
            window[0] += error["occurrences"]
            window[1], window[2] = min(window[1], first), max(window[2], last)
        if not errors:
            return
        failed = {
            (entry["name"], entry["method"]): {
                int(second): n for second, n in (entry.get("num_fail_per_sec") or {}).items()
            }
            for entry in data.get("stats") or ()
            if (entry["name"], entry["method"]) in errors
        }
        self._add_batch(failed, errors)

    def _local_batch(self) -> None:
        stats = self.environment.stats
        since, self._last_tick = int(self._last_tick), time.time()
        errors: dict[Any, ClassWindows] = {}
        for key, error in stats.errors.items():
            new = error.occurrences - self._seen_errors.get(key, 0)
            if new <= 0:  # none, or reset_all() cleared the stats (new counts start at 0)
                self._seen_errors[key] = error.occurrences
                continue
            self._seen_errors[key] = error.occurrences
            first = max(int(error.first_seen or since), since)
            last = max(int(error.last_seen or first), first)
            classes = errors.setdefault((error.name, error.method), {})
            classes[StatsError.parse_error(error.error)] = [new, first, last]
        failed: dict[tuple[str, str], dict[int, int]] = {}
        for key in errors:
            entry = stats.entries.get(key)
            if entry is None:
                continue
            seen = self._seen_fails.setdefault(key, {})
            # Only seconds from the last batch's on can have grown; older ones are done.
            for second in [s for s in seen if s < since]:
                del seen[second]
            buckets = entry.num_fail_per_sec
            for second in range(since, int(self._last_tick) + 1):
                new = buckets.get(second, 0) - seen.get(second, 0)
                if new > 0:
                    failed.setdefault(key, {})[second] = new
                    seen[second] = buckets[second]
        self._add_batch(failed, errors)

    def write_seconds(self, upto: int, final: bool) -> None:
        if not self.master:
            self._local_batch()
        if final:  # everything placed, to its last second
            upto = max(upto, self.next, *self.placed)
        while self.next <= upto:
            second = self.next
            counts = self.placed.pop(second, {})
            for name in counts:
                self.totals.setdefault(name, 0)
            for name, total in self.totals.items():
                count = counts.get(name, 0)
                self.totals[name] = total = total + count
                self.writer.writerow((second, second - self.first, name, count, total))
            self.next += 1

    def close(self) -> None:
        if self.master:
            self.environment.events.worker_report.remove_listener(self._on_worker_report)
        super().close()


# option -> its writer; both are master/local only (workers send their counts to the master)
CSV_WRITERS: dict[str, type[PerSecondCsv]] = {
    "rate_csv": RateCsvWriter,
    "failures_csv": FailureCsvWriter,
}


def _start_csv_writers(environment: Environment) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    for option, kind in CSV_WRITERS.items():
        path = str(opt(environment, option, "") or "")
        if not path:
            continue
        running = STATE.csv_writers.get(option)
        if running is not None:
            running[0].new_test(environment)
            continue
        writer = kind(environment, path)
        STATE.csv_writers[option] = (writer, gevent.spawn(writer.run))


def _stop_csv_writers() -> None:
    for writer, greenlet in STATE.csv_writers.values():
        greenlet.kill(block=False)
        writer.close()
    STATE.csv_writers.clear()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner) and environment.parsed_options is not None:
        # Fires before the master dispatches the spawn messages, which carry these options.
        setattr(environment.parsed_options, WORKERS_ATTR, max(runner.worker_count, 1))
    STATE.rate = RateControl(environment)
    _start_csv_writers(environment)
    _series.start(environment, str(opt(environment, "series_file") or ""))


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    _series.stop(environment)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    # At quitting, the master has the workers' final reports: the last rows are complete.
    _stop_csv_writers()
    _series.close()


# --------------------------------------------------------------------------- final CSV rows
def _final_csv_rows(writer: Any) -> None:
    """Rewrite _stats.csv, _failures.csv and _exceptions.csv with the final numbers.

    Locust rewrites these files once a second and does not write them again at shutdown, so
    they miss up to the last second of the run (locustio/locust#1806, #2299); the terminal
    summary, --json and --html have the final numbers. ``close_files`` runs after the runner
    has quit (and, on a master, after the workers' final reports), so writing here is final.
    """
    for handle, write in (
        (writer.requests_csv_filehandle, writer.requests_csv),
        (writer.failures_csv_filehandle, writer.failures_csv),
        (writer.exceptions_csv_filehandle, writer.exceptions_csv),
    ):
        if handle.closed:
            continue
        handle.seek(0)
        write(csv.writer(handle))
        handle.truncate()


def _patch_csv_close() -> None:
    original = getattr(StatsCSVFileWriter, "close_files", None)
    if original is None or getattr(original, "_chaos_final_rows", False):
        return

    def close_files(self: Any) -> None:
        try:
            _final_csv_rows(self)
        except Exception:  # never break Locust's shutdown over a report
            log.exception("could not write the final CSV rows")
        original(self)

    close_files._chaos_final_rows = True  # type: ignore[attr-defined]
    StatsCSVFileWriter.close_files = close_files  # type: ignore[method-assign]


_patch_csv_close()
