"""Start a real Locust master and N workers, wait for the run, read its CSVs, stop everything.

Locust is never imported here: it monkey-patches the whole process with gevent on import.
The controller only starts processes, through a ``spawn(argv, **popen_kwargs) -> Popen``
callable (the lab passes one that enters the client namespace; the default is
``subprocess.Popen``), and talks Locust's own master/worker protocol by command line::

    master: locust -f FILE --master --headless --expect-workers N --users U --spawn-rate R
            --run-time T --csv PREFIX --csv-full-history --html FILE
            --master-bind-host 127.0.0.1 --master-bind-port P  [user args]
    worker: locust -f FILE --worker --master-host 127.0.0.1 --master-port P  [user args]

``workers=0`` runs one plain headless process instead (no master/worker protocol).

Files, under ``run_dir``::

    logs/locust-master.log, logs/locust-worker-<i>.log   stdout+stderr of each process
    locust/locust_stats.csv, _failures.csv, _stats_history.csv, _exceptions.csv
    locust/report.html
    locust/rate.csv                                        with rate_csv=True (our locustfiles)
    locust/failures_per_second.csv                         failures per class and second
                                                           (our locustfiles: see failures_csv)
    locust/load_series.jsonl                               the per-second load series
                                                           (our locustfiles: chaos.load.series)

The master port is picked free in the controller's namespace unless given; a spawn into a
fresh namespace sees all ports free anyway (its loopback must be up: the lab's job).

Every exit path of :meth:`LocustRun.run` stops the processes (SIGTERM, then SIGKILL after
``kill_after`` s); :meth:`LocustRun.stop` is idempotent and also safe after a failed start.
Failures raise :class:`chaos.errors.LoadError` with the tail of the log that explains them.

Note on counts: Locust rewrites its CSVs once a second and not at shutdown, so the last second
is missing from them (locustio/locust#1806) -- except with our locustfiles, whose ``_common``
module writes the final rows at shutdown. Read ``total_requests`` with that in mind when using
another locustfile.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from chaos.errors import LoadError
from chaos.kernel.processes import die_with_parent
from chaos.load.series import series_path

Spawn = Callable[..., subprocess.Popen]

PERCENTILE_KEYS = (
    "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
)  # fmt: skip
LOG_TAIL_LINES = 25
# Written by our locustfiles' --failures-csv: an artefact (the load_failures series is read).
FAILURES_CSV = "failures_per_second.csv"


def locust_executable() -> Path:
    """The ``locust`` script of the running interpreter's environment."""
    return Path(sys.executable).with_name("locust")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 16384, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- results
def _num(text: str | None) -> float:
    if text in (None, "", "N/A"):
        return 0.0
    try:
        return float(text)  # type: ignore[arg-type]
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class EntryStats:
    """One row of Locust's _stats.csv (times in ms)."""

    type: str
    name: str
    requests: int
    failures: int
    median_ms: float
    avg_ms: float
    min_ms: float
    max_ms: float
    avg_bytes: float
    rps: float
    fails_per_s: float
    percentiles: dict[str, float]

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> EntryStats:
        return cls(
            type=row.get("Type", ""),
            name=row.get("Name", ""),
            requests=int(_num(row.get("Request Count"))),
            failures=int(_num(row.get("Failure Count"))),
            median_ms=_num(row.get("Median Response Time")),
            avg_ms=_num(row.get("Average Response Time")),
            min_ms=_num(row.get("Min Response Time")),
            max_ms=_num(row.get("Max Response Time")),
            avg_bytes=_num(row.get("Average Content Size")),
            rps=_num(row.get("Requests/s")),
            fails_per_s=_num(row.get("Failures/s")),
            percentiles={k: _num(row.get(k)) for k in PERCENTILE_KEYS if k in row},
        )


@dataclass(frozen=True)
class FailureRow:
    type: str
    name: str
    error: str
    occurrences: int


@dataclass(frozen=True)
class HistoryPoint:
    """One second of the primary entry from _stats_history.csv (cumulative totals).

    On a master, workers report every 3 s, so per-second deltas come in steps."""

    timestamp: int
    users: int
    rps: float
    fails_per_s: float
    total_requests: int
    total_failures: int


@dataclass(frozen=True)
class LoadResult:
    """What a Locust run produced.

    ``total_requests``/``total_failures`` are those of the primary entry: ``connection`` (one
    per connection attempt in our locustfiles) when the run has one, else ``Aggregated``.
    """

    primary: str
    total_requests: int
    total_failures: int
    achieved_rate: float  # primary entry's requests / run duration, as Locust computes it
    percentiles: dict[str, float]  # primary entry, ms
    failures_by_class: dict[str, int]  # error -> occurrences, over all entries
    failures: list[FailureRow]
    entries: dict[str, EntryStats]  # by name, "Aggregated" included
    history: list[HistoryPoint]
    rate_series: list[dict[str, float]]  # rate.csv rows (time, target_rate, achieved_rate, ...)
    exit_code: int
    workers: int
    run_dir: Path
    csv_prefix: Path
    #: exceptions the users' own code raised (Locust's _exceptions.csv): message -> count.
    #: A connection whose task raised is neither completed nor failed in any count.
    exceptions: dict[str, int] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return self.total_requests

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: scalars first, then tables."""
        primary = self.entries.get(self.primary)
        return {
            "primary_entry": self.primary,
            "total_requests": self.total_requests,
            "total_failures": self.total_failures,
            "achieved_rate": round(self.achieved_rate, 2),
            "p50_ms": self.percentiles.get("50%", 0.0),
            "p99_ms": self.percentiles.get("99%", 0.0),
            "max_ms": primary.max_ms if primary else 0.0,
            "workers": self.workers,
            "exit_code": self.exit_code,
            "failures_by_class": dict(self.failures_by_class),
            "exceptions": dict(self.exceptions),
            "entries": {name: asdict(entry) for name, entry in self.entries.items()},
            "rate_series": list(self.rate_series),
        }


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def _raised_where(row: dict[str, str]) -> str:
    """An exceptions-CSV row as "message (file.py:line)": Locust keeps only str(exception),
    so the innermost frame of its traceback says where it came from."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', row.get("Traceback") or "")
    where = f" ({Path(frames[-1][0]).name}:{frames[-1][1]})" if frames else ""
    return (row.get("Message") or "?") + where


def parse_results(
    csv_prefix: Path,
    *,
    primary_name: str = "connection",
    rate_csv: Path | None = None,
    exit_code: int = 0,
    workers: int = 0,
    run_dir: Path | None = None,
) -> LoadResult:
    """Read Locust's CSVs (stats, failures, stats_history, exceptions) into a LoadResult."""
    stats_path = Path(f"{csv_prefix}_stats.csv")
    if not stats_path.exists():
        raise LoadError(
            f"Locust wrote no stats file at {stats_path}",
            "the master probably failed before the test started: see its log",
        )
    entries: dict[str, EntryStats] = {}
    for row in _read_csv(stats_path):
        entry = EntryStats.from_row(row)
        # Same name under two request types: keep the first, it is rare and documented.
        entries.setdefault(entry.name, entry)
    primary = primary_name if primary_name in entries else "Aggregated"
    main = entries.get(primary)

    failures = [
        FailureRow(
            type=row.get("Method", ""),
            name=row.get("Name", ""),
            error=row.get("Error", ""),
            occurrences=int(_num(row.get("Occurrences"))),
        )
        for row in _read_csv(Path(f"{csv_prefix}_failures.csv"))
    ]
    by_class: dict[str, int] = {}
    for failure in failures:
        by_class[failure.error] = by_class.get(failure.error, 0) + failure.occurrences

    history = [
        HistoryPoint(
            timestamp=int(_num(row.get("Timestamp"))),
            users=int(_num(row.get("User Count"))),
            rps=_num(row.get("Requests/s")),
            fails_per_s=_num(row.get("Failures/s")),
            total_requests=int(_num(row.get("Total Request Count"))),
            total_failures=int(_num(row.get("Total Failure Count"))),
        )
        for row in _read_csv(Path(f"{csv_prefix}_stats_history.csv"))
        if row.get("Name") == primary
    ]
    rate_series = (
        [{k: _num(v) for k, v in row.items()} for row in _read_csv(rate_csv)] if rate_csv else []
    )
    exceptions = {
        _raised_where(row): int(_num(row.get("Count")))
        for row in _read_csv(Path(f"{csv_prefix}_exceptions.csv"))
    }
    return LoadResult(
        primary=primary,
        total_requests=main.requests if main else 0,
        total_failures=main.failures if main else 0,
        achieved_rate=main.rps if main else 0.0,
        percentiles=dict(main.percentiles) if main else {},
        failures_by_class=by_class,
        failures=failures,
        entries=entries,
        history=history,
        rate_series=rate_series,
        exit_code=exit_code,
        workers=workers,
        run_dir=run_dir or csv_prefix.parent,
        csv_prefix=csv_prefix,
        exceptions=exceptions,
    )


# --------------------------------------------------------------------------- the run
@dataclass
class _Proc:
    role: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]


class LocustRun:
    """One Locust run: a master and ``workers`` worker processes (or one local process).

    Use ``run()`` (start, wait, parse, stop on every path), or ``start()``/``wait()``/``stop()``,
    or ``with LocustRun(...) as r: result = r.wait()``.
    """

    def __init__(
        self,
        locustfile: str | os.PathLike[str],
        *,
        host: str,
        run_dir: str | os.PathLike[str],
        users: int,
        spawn_rate: float,
        run_time: float,
        workers: int | None = None,
        user_args: Sequence[str] = (),
        user_classes: Sequence[str] = (),
        master_args: Sequence[str] = (),
        spawn: Spawn | None = None,
        master_port: int | None = None,
        stop_timeout: float = 0.0,
        start_timeout: float = 30.0,
        exit_grace: float = 30.0,
        kill_after: float = 5.0,
        primary_entry: str = "connection",
        rate_csv: bool = False,
        failures_csv: bool | None = None,
        locust_bin: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        master_bind_host: str = "127.0.0.1",
        local_workers: int | None = None,
    ) -> None:
        """
        ``run_time`` is seconds of test after all workers connected (rounded up to whole
        seconds for Locust). ``user_args`` go to every process (the user-class options);
        ``master_args`` to the master only. ``stop_timeout`` is Locust's --stop-timeout: keep
        it 0 on distributed runs, since a master gives workers only 0.5 s for their final
        report. ``start_timeout`` bounds the wait for workers (--expect-workers-max-wait);
        ``exit_grace`` is how long after the planned end the master may take to exit.
        ``rate_csv`` adds ``--rate-csv`` (an option of our locustfiles) on the master;
        ``failures_csv`` adds ``--failures-csv``, by default (None) when the locustfile is one
        of ours, i.e. sits next to ``_common.py`` (another locustfile would refuse the option).
        """
        if users < 1:
            raise LoadError(f"users must be at least 1, got {users}")
        if run_time <= 0:
            raise LoadError(f"run_time must be positive, got {run_time}")
        self.locustfile = Path(locustfile)
        self.host = host
        self.run_dir = Path(run_dir)
        self.users = users
        self.spawn_rate = spawn_rate
        self.run_time = max(1, math.ceil(run_time))
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.user_args = list(user_args)
        self.user_classes = list(user_classes)
        self.master_args = list(master_args)
        # by default Locust dies with its controller, even of a SIGKILL
        self.spawn: Spawn = spawn or partial(subprocess.Popen, preexec_fn=die_with_parent)
        self.master_port = master_port
        # A remote run's workers are other hosts' processes: the master listens for them on
        # master_bind_host and starts local_workers (default: all of them) itself.
        self.master_bind_host = master_bind_host
        self.local_workers = self.workers if local_workers is None else local_workers
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.exit_grace = exit_grace
        self.kill_after = kill_after
        self.primary_entry = primary_entry
        self.locust_bin = Path(locust_bin) if locust_bin else locust_executable()
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.logs_dir = self.run_dir / "logs"
        self.out_dir = self.run_dir / "locust"
        self.csv_prefix = self.out_dir / "locust"
        self.html_path = self.out_dir / "report.html"
        self.stopped_early: str | None = None  # why wait() ended the run early
        self.rate_csv_path = self.out_dir / "rate.csv" if rate_csv else None
        if failures_csv is None:
            failures_csv = (self.locustfile.parent / "_common.py").is_file()
        self.failures_csv_path = self.out_dir / FAILURES_CSV if failures_csv else None
        # the per-second load series (chaos.load.series): our locustfiles only, like the above
        self.series_path = series_path(self.run_dir) if failures_csv else None
        self._procs: list[_Proc] = []
        self._started_at: float | None = None
        self._stopped = False

    # ------------------------------------------------------------------ argv
    def _common_args(self) -> list[str]:
        return [str(self.locust_bin), "-f", str(self.locustfile), *self.user_classes]

    def master_argv(self) -> list[str]:
        argv = self._common_args()
        if self.workers > 0:
            argv += [
                "--master",
                "--expect-workers", str(self.workers),
                "--expect-workers-max-wait", str(max(1, math.ceil(self.start_timeout))),
                "--master-bind-host", self.master_bind_host,
                "--master-bind-port", str(self.master_port),
            ]  # fmt: skip
        argv += [
            "--headless",
            "--host", self.host,
            "--users", str(self.users),
            "--spawn-rate", f"{self.spawn_rate:g}",
            "--run-time", f"{self.run_time}s",
            "--stop-timeout", f"{self.stop_timeout:g}",
            "--csv", str(self.csv_prefix),
            "--csv-full-history",
            "--html", str(self.html_path),
            "--only-summary",
            # Connection failures are what we measure, not a failed run: exit 0 with them, so
            # a non-zero exit code means Locust itself failed.
            "--exit-code-on-error", "0",
        ]  # fmt: skip
        if self.rate_csv_path is not None:
            argv += ["--rate-csv", str(self.rate_csv_path)]
        if self.failures_csv_path is not None:
            argv += ["--failures-csv", str(self.failures_csv_path)]
        if self.series_path is not None:
            argv += ["--series-file", str(self.series_path)]
        return argv + self.master_args + self.user_args

    def worker_argv(self) -> list[str]:
        return [
            *self._common_args(),
            "--worker",
            "--master-host", "127.0.0.1",
            "--master-port", str(self.master_port),
            *self.user_args,
        ]  # fmt: skip

    # ------------------------------------------------------------------ lifecycle
    def _start_one(self, role: str, argv: list[str]) -> _Proc:
        log_path = self.logs_dir / f"locust-{role}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            popen = self.spawn(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own session: a terminal's Ctrl-C reaches only the controller, which stops
                # these processes itself, in order.
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise LoadError(
                f"cannot start Locust {role}: {exc}",
                f"is Locust installed next to {sys.executable}? ({self.locust_bin})",
            ) from exc
        proc = _Proc(role, popen, log_path, log_file)
        self._procs.append(proc)
        return proc

    def start(self) -> None:
        if self._procs:
            raise LoadError("this LocustRun was already started")
        if not self.locustfile.is_file():
            raise LoadError(f"locustfile {self.locustfile} does not exist")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.workers > 0 and self.master_port is None:
            self.master_port = free_port()
        self._started_at = time.monotonic()
        try:
            self._start_one("master", self.master_argv())
            for index in range(self.local_workers):
                self._start_one(f"worker-{index}", self.worker_argv())
        except BaseException:
            self.stop()
            raise

    @property
    def master(self) -> subprocess.Popen | None:
        return self._procs[0].popen if self._procs else None

    def deadline(self) -> float:
        """Seconds from start by which the master must have exited."""
        waiting = self.start_timeout if self.workers > 0 else 0.0
        return waiting + self.run_time + self.stop_timeout + self.exit_grace

    def wait(
        self, timeout: float | None = None, stop_early: Callable[[], str | None] | None = None
    ) -> LoadResult:
        """Wait for the master to finish and parse its CSVs; raises LoadError on failure.

        ``stop_early`` is asked about once a second; when it returns a reason, the master is
        sent SIGTERM (it stops its users, tells the workers to quit and writes its CSVs, as
        at the end of ``--run-time``) and ``stopped_early`` keeps the reason.

        Does not stop the processes on success (the master has exited and the workers follow
        it); call stop() (or use run()/a with block) to be sure.
        """
        if not self._procs or self._started_at is None:
            raise LoadError("LocustRun.wait() before start()")
        master = self._procs[0]
        limit = self._started_at + (self.deadline() if timeout is None else timeout)
        next_ask = time.monotonic() + 1.0
        while True:
            code = master.popen.poll()
            if code is not None:
                break
            if stop_early is not None and self.stopped_early is None and (
                time.monotonic() >= next_ask
            ):
                next_ask = time.monotonic() + 1.0
                self.stopped_early = stop_early()
                if self.stopped_early is not None:
                    with contextlib.suppress(ProcessLookupError):
                        master.popen.send_signal(signal.SIGTERM)
            for proc in self._procs[1:]:
                rc = proc.popen.poll()
                if rc not in (None, 0):
                    raise LoadError(
                        f"Locust {proc.role} exited with code {rc} while the run was going on;"
                        f" last lines of {proc.log_path}:\n{tail(proc.log_path)}",
                        "fix the error above (the worker and master share the locustfile and"
                        " options)",
                    )
            if time.monotonic() > limit:
                raise LoadError(
                    f"Locust master did not finish within {self.deadline():.0f} s;"
                    f" last lines of {master.log_path}:\n{tail(master.log_path)}",
                    "workers may not have connected (see logs/locust-worker-*.log), or users"
                    " do not stop: check --stop-timeout and the target",
                )
            time.sleep(0.1)
        master.log_file.flush()
        if code != 0:
            raise LoadError(
                f"Locust master exited with code {code}; last lines of {master.log_path}:\n"
                f"{tail(master.log_path)}",
                self._hint_for(master.log_path),
            )
        try:
            return parse_results(
                self.csv_prefix,
                primary_name=self.primary_entry,
                rate_csv=self.rate_csv_path,
                exit_code=code,
                workers=self.workers,
                run_dir=self.run_dir,
            )
        except LoadError as exc:
            raise LoadError(
                f"{exc.message}; last lines of {master.log_path}:\n{tail(master.log_path)}",
                exc.hint,
            ) from exc

    @staticmethod
    def _hint_for(log_path: Path) -> str:
        text = tail(log_path, 200)
        if "Gave up waiting for workers" in text or "expect-workers" in text:
            return "the workers did not connect: see logs/locust-worker-*.log"
        if "unrecognized arguments" in text:
            return "an option is not known to this locustfile (see `locust -f FILE --help`)"
        return "see the log above; Locust exits non-zero only when it failed itself"

    def run(self) -> LoadResult:
        """start(), wait(), and stop() on every path."""
        try:
            self.start()
            return self.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM every process still running (master first: it tells workers to quit),
        SIGKILL after ``kill_after`` s, reap, close logs. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        procs = list(self._procs)
        for proc in procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.kill_after
        for proc in procs:
            left = deadline - time.monotonic()
            try:
                proc.popen.wait(timeout=max(left, 0.01))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.log_file.close()

    def __enter__(self) -> LocustRun:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
