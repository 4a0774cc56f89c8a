"""The one place where a run is composed: scenario → lab → faults + load → teardown →
expectations → report.

The fault schedule is validated once the lab exists and before the load starts (a fault
that cannot be applied stops the run there), starts with the load (``at`` counts from the
load's start) and is stopped, which reverts every fault, as soon as the load ends, on every
exit path. Expectations are checked from ``samples.lp`` and the journal afterwards; any
failure makes ``chaos run`` exit 10.

While the load runs, a sampler takes the collectors of every role namespace
(``scenario.collectors``) and the per-second load series into the sink: ``samples.lp`` in the
run directory and, when configured, InfluxDB (see :mod:`chaos.sink`).

Teardown runs on every exit path: a normal end, an exception, Ctrl-C, and SIGTERM, SIGHUP
or SIGQUIT (turned into :class:`~chaos.endings.Terminated` so ``finally`` blocks run; the
exit code is then 128 + the signal). The lab's processes and Locust die with the controller
even after a SIGKILL (``PR_SET_PDEATHSIG``); `chaos lab down` and `chaos revert-all` sweep
what the kernel cannot (namespaces, faults).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.text import Text

from chaos.agent.client import AgentUnreachable, agent_clients
from chaos.collect import Collector, NetnsRef, SampleHook, Sampler, collectors_for
from chaos.collect.generations import ProxyGenerations
from chaos.collect.labcounters import LabCounter
from chaos.collect.load_series import LoadSeries
from chaos.collect.process import HostCpu, LoadGeneratorCpu, ProcessCpu
from chaos.collect.proxylog import ProxyLogErrors
from chaos.collect.timewait import TimeWaitTimers
from chaos.endings import Terminated, ending_for, held_signals, signals_raise
from chaos.errors import ChaosError, LoadError
from chaos.expect import Verdict, evaluate, run_timeline
from chaos.faults.engine.schedule import FaultSchedule
from chaos.kernel import netns
from chaos.kernel.processes import die_with_parent
from chaos.lab import certs, lab, proxies
from chaos.lab.topology import LAB_COUNTERS, LabState
from chaos.load.options import LoadTlsTarget, locustfile_for, user_options
from chaos.load.runner import LoadResult, LocustRun
from chaos.load.seconds import issuing_window, load_seconds, window_latency_us
from chaos.load.series import series_path
from chaos.progress import Progress, live_progress
from chaos.record import logcap
from chaos.record.journal import read_journal
from chaos.record.lineproto import read_points
from chaos.record.point import Sample
from chaos.record.rundir import RunDir, RunFiles, chown_to_invoker
from chaos.report import Report, drift_failed, load_run, print_summary, write_report
from chaos.report.drift import judge as judge_drift
from chaos.scenario import loader
from chaos.scenario.model import FaultSpec, RemoteSpec, Scenario, parse_duration
from chaos.sink import InfluxConfig, InfluxFlags, Sink, SinkStats, resolve_influx


@dataclass(frozen=True)
class RunOptions:
    scenario: str
    runs_root: Path = Path("runs")
    duration: str | None = None
    lab_name: str | None = None
    workers: int | None = None
    influx: InfluxFlags = field(default_factory=InfluxFlags)
    variant: str | None = None
    rate: float | None = None  # overrides load.rate (new connections/s)
    users: int | None = None  # overrides load.users
    report: bool = True
    progress: bool = True  # live progress line (a compact line every 10 s when not a TTY)
    proxy_config: str | None = None  # the user's proxy configuration file (--proxy-config)
    proxy_kind: str | None = None


def resolve(options: RunOptions) -> Scenario:
    scenario = loader.load(options.scenario)
    if options.variant:
        scenario = loader.with_variant(scenario, options.variant)
    if options.proxy_config:
        scenario = loader.with_proxy_config(scenario, options.proxy_config, options.proxy_kind)
    updates: dict[str, Any] = {}
    if options.duration:
        try:
            updates["duration"] = parse_duration(options.duration)
        except ValueError as exc:
            raise ChaosError(f"--duration {options.duration!r}: {exc}") from None
    load_updates = {
        key: value
        for key, value in (
            ("workers", options.workers), ("rate", options.rate), ("users", options.users)
        )
        if value is not None
    }
    if load_updates:
        updates["load"] = scenario.load.model_copy(update=load_updates)
    return scenario.model_copy(update=updates) if updates else scenario


class StopCheck(Protocol):
    """Ends a run's load early: it hears every batch of samples the sampler publishes
    (``observe``) and is asked once a second with the run directory; a reason ends it."""

    def observe(self, samples: list[Sample]) -> None: ...

    def __call__(self, run_path: Path) -> str | None: ...


def run_scenario(
    options: RunOptions,
    console: Console,
    scenario: Scenario | None = None,
    on_done: Callable[[Path, int], int] | None = None,
    stop_early: StopCheck | None = None,
) -> int:
    """``scenario`` overrides the one ``options`` names (``chaos sweep`` passes its rate
    steps); ``on_done(run_dir, exit_code)`` sees the finished run and returns the exit code;
    ``stop_early(run_dir)`` may end the load before its duration (a sweep past its knee)."""
    scenario = scenario or resolve(options)
    if scenario.remote is not None:  # existing hosts instead of a lab: see run_remote
        return run_remote(options, scenario, console)
    influx = resolve_influx(scenario.sink.influxdb, options.influx)  # config errors: now
    name = options.lab_name or scenario.lab.name or f"r{secrets.token_hex(3)}"
    lab.preflight(scenario, name)
    run, label = open_run(options, scenario, lab=name)
    console.print(
        f"run [bold]{label}[/] for {scenario.duration:g}s in lab {name}; "
        f"run directory {run.path}"
    )
    result: LoadResult | None = None
    sink: Sink | None = None
    sink_stats: SinkStats | None = None
    with signals_raise(), Ending(run) as ending:
        try:
            sink = open_sink(scenario, run, influx, console)  # InfluxDB down: fail before lab.up
            state = lab.up(scenario, name, run, tied=True)
            schedule = FaultSchedule(
                scenario.faults, state, run.journal, annotate=sink.annotate
            )
            schedule.validate()  # every fault checked before the load starts
            samples = SampleHook()  # each tick's samples: the sink first, then the observers
            samples.subscribe(sink.write)
            if stop_early is not None:
                samples.subscribe(stop_early.observe)
            with (
                run_progress(options, scenario, samples, console, schedule),
                sampling(scenario, state, run, samples),
            ):
                result = drive_load(scenario, state, run, console, schedule, stop_early)
            ending.done()
        finally:
            with ending.teardown():
                removed = lab.down(name)
                run.journal.event("lab.down", lab=name, removed=len(removed))
                sink_stats = sink.close() if sink is not None else None  # journals sink.stats
        code = conclude(options, scenario, run.path, result, sink_stats, console)
    return on_done(run.path, code) if on_done else code


class Ending:
    """How a run ends, whatever ends it: the journal's ``run.end``, and when it ended early
    (a stop signal, Ctrl-C, an error) the report of what was gathered; the interruption or
    error then goes on to the CLI (exit 128 + signal, or the error's code).

    ``with signals_raise(), Ending(run) as ending:`` around the run; ``ending.done()`` when
    the body finished; ``with ending.teardown():`` around the cleanup in ``finally``, which a
    second signal cannot cut short (it is recorded and ends the run once cleanup is done).
    On success the caller concludes (summary, verdicts, report) inside the block; on an
    early end :meth:`__exit__` writes the summary and report of what was gathered.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.outcome = "error"
        self.interrupted: BaseException | None = None

    def __enter__(self) -> Ending:
        return self

    def done(self) -> None:
        self.outcome = "done"

    @contextmanager
    def teardown(self) -> Iterator[None]:
        if isinstance(sys.exc_info()[1], KeyboardInterrupt | Terminated):
            self.outcome = "interrupted"  # called from a finally: the interruption is on its way
        with held_signals() as late:
            try:
                yield
            finally:
                if late and self.outcome == "done":
                    self.outcome = "interrupted"
                    self.interrupted = ending_for(late[0])
                self.run.journal.event("run.end", outcome=self.outcome)
                self.run.close()
                chown_to_invoker(self.run.path)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, KeyboardInterrupt | Terminated):
            self.interrupted = exc
        failed = exc is not None and self.outcome == "error"  # not an error of conclude's
        if self.interrupted is None and not failed:
            return
        if has_samples(self.run.path):  # the report of what was gathered before the end
            summary = {**summarize(self.run.path, None), "interrupted": True}
            if self.interrupted is None:  # an error ended it
                summary.update(interrupted=False, error=str(exc))
            self.run.files.summary.write_text(json.dumps(summary, indent=2))
            with suppress(ChaosError):  # the run's ending stands without its report
                write_report(self.run.path)
            chown_to_invoker(self.run.path)
        if self.interrupted is not None and self.interrupted is not exc:
            raise self.interrupted  # a signal during teardown after a finished body


def has_samples(run_path: Path) -> bool:
    try:
        return RunFiles(run_path).samples.stat().st_size > 0
    except OSError:
        return False


def open_run(options: RunOptions, scenario: Scenario, **where: str) -> tuple[RunDir, str]:
    """The run directory, with the resolved scenario and the journal's run.start."""
    label = f"{scenario.name}-{scenario.variant}" if scenario.variant else scenario.name
    run = RunDir.create(label, options.runs_root)
    run.write_scenario(loader.dump_resolved(scenario))
    run.journal.event(
        "run.start",
        scenario=scenario.name,
        variant=scenario.variant,
        duration=scenario.duration,
        **where,
    )
    return run, label


def conclude(
    options: RunOptions,
    scenario: Scenario,
    run_path: Path,
    result: LoadResult | None,
    sink_stats: SinkStats | None,
    console: Console,
) -> int:
    """After the run: summary.json, verdicts, report; the exit code."""
    summary = summarize(run_path, result)
    if sink_stats is not None:
        summary["sink"] = sink_stats.as_dict()
    verdicts = check_expectations(scenario, run_path)
    summary["expectations"] = [v.as_dict() for v in verdicts]
    RunFiles(run_path).summary.write_text(json.dumps(summary, indent=2))
    report: Report | None = None
    try:
        if options.report:
            report = write_report(run_path)
            summary["drift"] = report.summary["drift"]
        else:
            summary["drift"] = judge_drift(load_run(run_path)).as_dict()
        RunFiles(run_path).summary.write_text(json.dumps(summary, indent=2))
    except ChaosError as exc:  # the run's verdict stands without its report
        console.print(Text(f"no report: {exc.message}", "yellow"))
    print_summary(console, summary, report)
    chown_to_invoker(run_path)
    if result is not None and result.exceptions:
        # a bug in the load's own code, not a failure of the system under test: the counts
        # miss those connections, so no verdict on them stands
        first, raised = next(iter(result.exceptions)), sum(result.exceptions.values())
        console.print(
            Text(
                f"the load generator's own code raised {raised} exception(s), e.g. {first}: "
                "those connections are in no count and the verdicts do not stand; "
                f"see {result.csv_prefix}_exceptions.csv",
                "bold red",
            )
        )
        return LoadError.exit_code
    failed = any(not v.passed for v in verdicts) or drift_failed(summary)
    return EXIT_EXPECTATION_FAILED if failed else 0


EXIT_EXPECTATION_FAILED = 10


def check_expectations(scenario: Scenario, run_path: Path) -> list[Verdict]:
    if not scenario.expect:
        return []
    files = RunFiles(run_path)
    points = read_points(files.samples)
    timeline = run_timeline(read_journal(files.journal_file), points)
    return evaluate(scenario, points, timeline)  # type: ignore[arg-type]


def open_sink(
    scenario: Scenario, run: RunDir, influx: InfluxConfig | None, console: Console
) -> Sink:
    def warn(message: str) -> None:  # from the sink's writer thread; plain text, no markup
        console.print(Text.assemble(("sink: ", "bold yellow"), message), soft_wrap=True)

    sink = Sink(
        run.path,
        tags={"run": run.path.name, "scenario": scenario.name},
        influx=influx,
        journal=run.journal,
        on_error=warn,
    )
    where = f" and InfluxDB at {influx.describe()}" if influx else ""
    console.print(f"samples to {sink.path}{where}")
    return sink


@contextmanager
def sampling(
    scenario: Scenario, state: LabState, run: RunDir, samples: SampleHook
) -> Iterator[None]:
    """Sample every role namespace and the per-second load series, published on ``samples``
    while the body runs; one last tick after it (the master writes its last seconds when it
    exits). The collectors are closed on every path: they hold the lab's namespaces open."""
    from chaos.collect import peers_from_rules
    from chaos.lab.topology import Plan

    spec = scenario.collectors
    refs: dict[str, NetnsRef] = {}  # role (or "host") -> its namespace, opened once
    collectors: list[Collector] = []
    sampler: Sampler | None = None
    # zombies are confirmed against the namespace at the other end of each connection
    peer_rules = Plan(state.name, scenario.lab).peer_rules()

    def ref_of(role: str) -> NetnsRef | None:
        if role not in refs:
            if role == "host":
                refs[role] = NetnsRef.host()
            elif role in state.namespaces:
                refs[role] = NetnsRef.named(state.namespaces[role])
            elif role == "proxy" and (external := external_proxy_netns(state)) is not None:
                refs[role] = external
            else:
                return None
        return refs[role]

    try:
        for role in spec.roles:
            ref = ref_of(role)
            if ref is None:  # e.g. no proxy namespace with an external proxy
                continue
            collectors += collectors_for(
                ref,
                tags={"role": role},
                zombie_idle_s=spec.zombie_idle,
                zombie_period=spec.zombie_period,
                zombie_peers=peers_from_rules(role, peer_rules, ref_of),
                budget_period=spec.budget_period,
                # Locust's master and workers talk over loopback in the client namespace
                exclude_loopback=role == "client",
            )
            if role in spec.time_wait_timers:
                collectors.append(TimeWaitTimers(ref, tags={"role": role}))
            # the lab's own packet counters in this role (escapes at the origin, resets
            # toward the clients at the gateway), where the lab made the namespace (an
            # external proxy's has no lab table)
            collectors += [
                LabCounter(ref.label, measurement, tags={"role": role})
                for measurement, counter in LAB_COUNTERS.items()
                if counter.role == role and role in state.namespaces
            ]
        # the series file the Locust master of our locustfiles writes
        collectors += load_collectors(run.path, state.namespaces["client"])
        collectors += process_collectors(state)
        if (generations := proxy_generations(state, ref_of("proxy"))) is not None:
            collectors.append(generations)
        if state.process("proxy") is not None:
            # the lab's own proxy writes <run>/logs/proxy.log: its connect() errors, counted
            collectors.append(
                ProxyLogErrors(
                    run.path / "logs" / "proxy.log",
                    netns=state.namespaces.get("proxy", "host"),
                    tags={"role": "proxy"},
                )
            )
        sampler = Sampler(
            collectors, interval=spec.interval, samples=samples, controller=True
        ).start()
        run.journal.event("sampler.start", collectors=len(collectors), interval=spec.interval)
        yield
        sampler.final_tick()
    finally:
        if sampler is not None:
            sampler.stop()
            stats = sampler.stats
            run.journal.event(
                "sampler.stop", ticks=stats.ticks, skipped=stats.skipped_ticks, errors=stats.errors
            )
        for collector in collectors:
            collector.close()
        for opened in refs.values():
            opened.close()


def load_collectors(run_path: Path, netns_label: str) -> list[Collector]:
    """The per-second load series (``load``, ``load_failures``), tailed from the file the
    Locust master of our locustfiles writes (``locust/load_series.jsonl``). Locust's own CSVs
    stay in ``locust/`` as artefacts; nothing is computed from its rolling stats."""
    return [LoadSeries(series_path(run_path), netns=netns_label, tags={"role": "client"})]


def process_collectors(state: LabState) -> list[Collector]:
    """CPU and memory of the proxy and origin processes the lab started, of an external
    proxy named by pid, process name or cgroup, of every Locust process in the client
    namespace, and of the host: a capacity sweep tells a saturated proxy from exhausted
    ports, and both from a saturated load generator or host, by them."""
    client_ns = state.namespaces["client"]
    made: list[Collector] = [
        ProcessCpu(
            record.pid,
            netns=record.namespace or "host",
            tags={"role": role},
            follow=recorded_pid(state.name, role),  # a restart fault starts a new process
        )
        for role in ("proxy", "origin")
        if (record := state.process(role)) is not None
    ]
    external = state.proxy
    if "pid" in external or "cgroup" in external:
        made.append(
            ProcessCpu(
                int(external.get("pid", 0)),  # type: ignore[call-overload]
                netns=str(external.get("netns", "host")),
                tags={"role": "proxy"},
                cgroup=external.get("cgroup"),  # type: ignore[arg-type]
            )
        )
    made.append(
        LoadGeneratorCpu(netns.path_of(client_ns), netns=client_ns, tags={"role": "client"})
    )
    made.append(HostCpu())
    return made


def recorded_pid(lab_name: str, role: str) -> Callable[[], int | None]:
    """The live process the lab's state file records for ``role`` now (read when asked)."""

    def pid() -> int | None:
        now = LabState.load(lab_name)
        record = now.process(role) if now is not None else None
        return record.pid if record is not None and record.alive() else None

    return pid


def proxy_generations(state: LabState, ref: NetnsRef | None) -> Collector | None:
    """Reloads of the proxy (old workers draining, their sockets): the lab's proxy, found
    again in the lab's state every tick (a restart fault records the new process), or an
    external proxy the scenario names by pid or process name."""
    if ref is None:
        return None
    if state.process("proxy") is not None:
        return ProxyGenerations(ref, recorded_pid(state.name, "proxy"), tags={"role": "proxy"})
    if "pid" in state.proxy:
        pid = int(state.proxy["pid"])  # type: ignore[call-overload]
        return ProxyGenerations(ref, lambda: pid, tags={"role": "proxy"})
    return None


def external_proxy_netns(state: LabState) -> NetnsRef | None:
    """The external proxy's network namespace, where the user named it (``lab.proxy.netns``,
    else the namespace of ``lab.proxy.process.pid``): its sockets are sampled as role proxy."""
    if "netns" in state.proxy:
        return NetnsRef.named(str(state.proxy["netns"]))
    if "pid" in state.proxy:
        return NetnsRef.of_pid(int(state.proxy["pid"]))  # type: ignore[call-overload]
    return None


def run_progress(
    options: RunOptions,
    scenario: Scenario,
    samples: SampleHook,
    console: Console,
    schedule: FaultSchedule,
) -> AbstractContextManager[Progress]:
    """Live progress, a listener of the sampler's ``samples``."""
    load = scenario.load
    progress = Progress(
        scenario.duration,
        rate_steps=load.rate_steps,
        step_duration=load.step_duration,
        rate=load.rate,
        active_faults=lambda: len(schedule.active),
    )
    return live_progress(samples, console, progress, enabled=options.progress)


def drive_load(
    scenario: Scenario,
    state: LabState,
    run: RunDir,
    console: Console,
    schedule: FaultSchedule,
    stop_early: StopCheck | None = None,
) -> LoadResult:
    load = scenario.load
    workers = load.workers or os.cpu_count() or 1
    client_ns = state.namespaces["client"]
    target = state.target or state.proxy
    scheme = "http" if load.user == "http" else "tcp"
    host = f"{scheme}://{target['host']}:{target['port']}"
    args = user_options(
        load, str(state.origin["protocol"]), state.client_addresses, workers,
        lab_tls(scenario, state, run),
    )  # fmt: skip
    stopped = longest_stop_of_workers(scenario)
    if stopped:
        # A SIGSTOPped worker misses heartbeats; the master must keep counting it.
        args += ["--heartbeat-liveness", str(int(stopped) + 30)]
    locust = LocustRun(
        locustfile=locustfile_for(load),
        host=host,
        users=load.users,
        spawn_rate=load.spawn_rate,
        run_time=scenario.duration,
        workers=workers,
        run_dir=run.path,
        user_args=args,
        spawn=lambda argv, **kw: netns.popen(client_ns, argv, prepare=die_with_parent, **kw),
        rate_csv=True,  # per-second target and achieved rate: an artefact beside Locust's CSVs
    )
    run.journal.event("load.start", workers=workers, users=load.users, host=host)
    return load_with_faults(
        locust, schedule, run, wait=locust.start_timeout, stop_early=stop_early
    )


def lab_tls(scenario: Scenario, state: LabState, run: RunDir) -> LoadTlsTarget | None:
    """The load's TLS through the lab: the run's CA when the lab made one (else the file
    the scenario names, or the system's), and the proxy's own address as the name its
    certificate carries (an intercepting gateway's clients connect to another)."""
    settings = scenario.load_tls
    if settings is None:
        return None
    ca = settings.ca or ""
    run_ca = certs.files_in(run.path / "proxy" / "tls").ca
    if not ca and run_ca.exists():
        ca = str(run_ca)
    return LoadTlsTarget(settings, ca, str(state.proxy["host"]))


def remote_tls(scenario: Scenario) -> LoadTlsTarget | None:
    settings = scenario.load_tls
    return None if settings is None else LoadTlsTarget(settings, settings.ca or "")


def load_with_faults(
    locust: LocustRun,
    schedule: FaultSchedule,
    run: RunDir,
    wait: float,
    console: Console | None = None,
    stop_early: StopCheck | None = None,
) -> LoadResult:
    """Start Locust, start the faults once its workers joined (``at`` counts from the
    load's real start), wait for the end; Locust stopped and faults reverted on every
    path. ``console``: say when the workers joined (remote runs, where that can take long).
    ``stop_early``: see :func:`run_scenario`; the reason is journaled (``load.stopped_early``)."""
    try:
        locust.start()
        joined = wait_for_ramp(locust, wait)
        schedule.start()
        if joined:
            run.journal.event("load.ramp", workers=locust.workers)
            if console is not None:
                console.print(f"{locust.workers} worker(s) joined; load and faults started")
        check = (lambda: stop_early(run.path)) if stop_early is not None else None
        result = locust.wait(stop_early=check)
        if locust.stopped_early is not None:
            run.journal.event("load.stopped_early", reason=locust.stopped_early)
    finally:
        locust.stop()
        schedule.stop()  # reverts what is still applied; raises if a fault failed
    run.journal.event("load.end", connections=result.total_requests, failures=result.total_failures)
    return result


def longest_stop_of_workers(scenario: Scenario) -> float:
    """The longest SIGSTOP window aimed at Locust's own processes (0 when none)."""
    return max(
        (
            spec.duration or scenario.duration
            for spec in scenario.faults
            if spec.type == "stop" and spec.target.split(":")[0] in ("workers", "client")
        ),
        default=0.0,
    )


def summarize(run_path: Path, result: LoadResult | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"run_dir": str(run_path)}
    if result is not None:
        summary["load"] = result.as_dict()
        # Latency from the load series' histograms, in microseconds, over the seconds the
        # load issued connections (Locust's own percentiles are whole milliseconds)
        for key in ("p50_ms", "p99_ms", "max_ms"):
            summary["load"].pop(key, None)
        window = issuing_window(load_seconds(read_points(RunFiles(run_path).samples)))
        if window is not None:
            latency = window_latency_us(run_path, *window)
            summary["load"].update({k: v for k, v in latency.items() if k != "count"})
    stats = RunFiles(run_path).origin_stats
    if stats.exists():
        summary["origin"] = json.loads(stats.read_text())
    proxy_log = run_path / "logs" / "proxy.log"
    if proxy_log.exists():
        summary["proxy_logged"] = len(proxies.parse_log(proxy_log))
        if rotated := logcap.rotated_away(proxy_log):  # lab.log_cap deleted the oldest lines
            summary["proxy_log_parts_deleted"] = rotated
    return summary


# --- remote runs: the compose stack, or real hosts -----------------------------------------
#
# No lab is built. The load goes from this process's Locust master (workers on other hosts
# join it) to ``remote.target``; faults aimed at a role go to that role's agent; the
# collectors run on each host (``chaos collect --sink``) and write to InfluxDB themselves, so
# this run's samples.lp holds the Locust stats and the fault annotations.

#: what the Locust master logs when the workers are in and the test starts (runners.py)
LOCUST_STARTED = b"Sending spawn jobs"


def remote_faults(scenario: Scenario) -> list[FaultSpec]:
    """Each fault with its ``ROLE[:PATTERN]`` target turned into ``AGENT_URL/ROLE[:PATTERN]``
    (the model checked that every role has an agent)."""
    remote = scenario.remote
    assert remote is not None
    specs = []
    for spec in scenario.faults:
        role = spec.target.split(":", 1)[0]
        if role in remote.agents:
            spec = spec.model_copy(update={"target": f"{remote.agents[role]}/{spec.target}"})
        specs.append(spec)
    return specs


def _wait_for(what: str, probe: Callable[[], None], deadline: float, hint: str) -> None:
    """Call ``probe`` until it does not raise OSError/AgentUnreachable, or until deadline."""
    while True:
        try:
            probe()
            return
        except (OSError, AgentUnreachable) as exc:
            if time.monotonic() > deadline:
                raise ChaosError(f"{what} did not answer in time: {exc}", hint) from None
        time.sleep(0.5)


def wait_ready(
    remote: RemoteSpec, faults: list[FaultSpec], influx: InfluxConfig | None, console: Console
) -> None:
    """Wait (up to ``remote.wait``) for the proxy, every agent the faults use, and InfluxDB:
    in a compose stack they start in any order."""
    deadline = time.monotonic() + remote.wait
    host, _, port = remote.target.rpartition(":")

    def connect() -> None:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()

    _wait_for(
        f"the target {remote.target}",
        connect,
        deadline,
        "is the proxy up and remote.target right (HOST:PORT from this host)?",
    )
    agents = agent_clients(faults)
    for client in agents:
        _wait_for(
            f"agent {client.base}",
            lambda client=client: client.expect("GET", "/health"),  # type: ignore[misc]
            deadline,
            "is `chaos agent` running there with --listen on an address this host reaches?",
        )
    if influx is not None:
        url = f"{influx.url}/health"
        _wait_for(
            f"InfluxDB at {influx.url}",
            lambda: urllib.request.urlopen(url, timeout=2).close(),
            deadline,
            "is InfluxDB up, and INFLUXDB_V2_URL right from this host?",
        )
    console.print(f"target {remote.target}, {len(agents)} agent(s) and the sink answer")


def run_remote(options: RunOptions, scenario: Scenario, console: Console) -> int:
    """Run ``scenario`` against existing hosts (``scenario.remote``): wait for them, open
    the sink, validate the faults with their agents, then drive the load and the schedule."""
    remote = scenario.remote
    assert remote is not None
    influx = resolve_influx(scenario.sink.influxdb, options.influx)
    faults = remote_faults(scenario)
    if remote.workers_from and not scenario.load.workers:
        workers = count_workers(remote.workers_from, time.monotonic() + remote.wait)
        scenario = scenario.model_copy(
            update={"load": scenario.load.model_copy(update={"workers": workers})}
        )
    run, label = open_run(options, scenario, remote=remote.target)
    console.print(
        f"run [bold]{label}[/] for {scenario.duration:g}s against {remote.target} "
        f"({remote_workers(scenario)} Locust worker(s) to join on {remote.master_bind}); "
        f"run directory {run.path}"
    )
    result: LoadResult | None = None
    sink: Sink | None = None
    sink_stats: SinkStats | None = None
    with signals_raise(), Ending(run) as ending:
        try:
            wait_ready(remote, faults, influx, console)
            sink = open_sink(scenario, run, influx, console)
            # Remote faults never touch a local namespace: an empty lab state suffices.
            schedule = FaultSchedule(
                faults, LabState(name="remote", namespaces={}), run.journal, sink.annotate
            )
            schedule.validate()  # every agent checks its faults before the load starts
            with remote_sampling(scenario, run, sink):
                result = drive_remote_load(scenario, run, console, schedule)
            ending.done()
        finally:
            with ending.teardown():
                sink_stats = sink.close() if sink is not None else None
        return conclude(options, scenario, run.path, result, sink_stats, console)


@contextmanager
def remote_sampling(scenario: Scenario, run: RunDir, sink: Sink) -> Iterator[None]:
    """The per-second load series into the sink (the hosts' collectors write the rest)."""
    collectors = load_collectors(run.path, "controller")
    sampler = Sampler(collectors, interval=scenario.collectors.interval)
    sampler.samples.subscribe(sink.write)
    sampler.start()
    try:
        yield
        sampler.final_tick()
    finally:
        sampler.stop()
        for collector in collectors:
            collector.close()


def drive_remote_load(
    scenario: Scenario, run: RunDir, console: Console, schedule: FaultSchedule
) -> LoadResult:
    remote, load = scenario.remote, scenario.load
    assert remote is not None
    workers = remote_workers(scenario)
    bind_host, _, bind_port = remote.master_bind.rpartition(":")
    scheme = "http" if load.user == "http" else "tcp"
    locust = LocustRun(
        locustfile=locustfile_for(load),
        host=f"{scheme}://{remote.target}",
        users=load.users,
        spawn_rate=load.spawn_rate,
        run_time=scenario.duration,
        workers=workers,
        local_workers=0,
        master_bind_host=bind_host.strip("[]"),
        master_port=int(bind_port),
        start_timeout=remote.wait,
        run_dir=run.path,
        user_args=user_options(load, remote.protocol, [], workers, remote_tls(scenario)),
    )
    run.journal.event("load.start", workers=workers, users=load.users, host=locust.host)
    console.print(f"waiting up to {remote.wait:g}s for {workers} worker(s) to join")
    return load_with_faults(locust, schedule, run, wait=remote.wait, console=console)


def count_workers(name: str, deadline: float) -> int:
    """How many addresses ``name`` resolves to (compose's DNS answers a scaled service's name
    with one address per replica); waits until it resolves."""
    while True:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            return len({info[4][0] for info in infos})
        except socket.gaierror as exc:
            if time.monotonic() > deadline:
                raise ChaosError(
                    f"remote.workers_from: {name!r} does not resolve ({exc.strerror})",
                    "start the workers first (compose: the controller depends on `worker`), "
                    "or give remote.workers",
                ) from None
        time.sleep(0.5)


def remote_workers(scenario: Scenario) -> int:
    """How many workers join: ``chaos run --workers`` or the count of remote.workers_from
    (load.workers), else remote.workers."""
    assert scenario.remote is not None
    return scenario.load.workers or scenario.remote.workers


def wait_for_ramp(locust: LocustRun, timeout: float) -> bool:
    """Until the master logs the start of the test (workers joined); False when the master
    exited or the time ran out (locust.wait() then says why)."""
    log = locust.logs_dir / "locust-master.log"
    deadline = time.monotonic() + timeout + 5
    while time.monotonic() < deadline:
        if log.exists() and LOCUST_STARTED in log.read_bytes():
            return True
        master = locust.master
        if master is None or master.poll() is not None:
            return False
        time.sleep(0.1)
    return False
