"""The one place where a run is composed: scenario → lab → faults + load → teardown →
expectations → report.

The fault schedule is validated once the lab exists and before the load starts (a fault
that cannot be applied stops the run there), starts with the load (``at`` counts from the
load's start) and is stopped, which reverts every fault, as soon as the load ends, on every
exit path. Expectations are checked from ``samples.lp`` and the journal afterwards; any
failure makes ``chaos run`` exit 10.

While the load runs, a sampler takes the collectors of every role namespace
(``scenario.collectors``) and Locust's per-second stats into the sink: ``samples.lp`` in the
run directory and, when configured, InfluxDB (see :mod:`chaos.sink`).

Teardown runs on every exit path: a normal end, an exception, Ctrl-C and SIGTERM (turned
into :class:`Terminated` so ``finally`` blocks run).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chaos.collect import Collector, NetnsRef, Sampler, collectors_for
from chaos.collect.escapes import EscapeCounter
from chaos.collect.locust_stats import LocustHistory
from chaos.errors import ChaosError
from chaos.expect import Timeline, Verdict, evaluate
from chaos.faults.schedule import FaultSchedule
from chaos.lab import lab, netns, proxies
from chaos.lab.topology import LabState
from chaos.load.options import locustfile_for, user_options
from chaos.load.runner import LoadResult, LocustRun
from chaos.report import write_report
from chaos.rundir import RunDir, chown_to_invoker, read_journal
from chaos.scenario import loader
from chaos.scenario.model import Scenario, parse_duration
from chaos.sink import InfluxConfig, InfluxFlags, Sink, resolve_influx
from chaos.sink.lineproto import read_points


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        # pyroute2 forks helper children (no exec) and stops them with SIGTERM; they inherit
        # this handler and must just exit, not run the run's cleanup a second time.
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class RunOptions:
    scenario: str
    runs_root: Path = Path("runs")
    duration: str | None = None
    lab_name: str | None = None
    workers: int | None = None
    influx: InfluxFlags = field(default_factory=InfluxFlags)
    variant: str | None = None
    report: bool = True


def resolve(options: RunOptions) -> Scenario:
    scenario = loader.load(options.scenario)
    if options.variant:
        scenario = loader.with_variant(scenario, options.variant)
    updates: dict[str, Any] = {}
    if options.duration:
        try:
            updates["duration"] = parse_duration(options.duration)
        except ValueError as exc:
            raise ChaosError(f"--duration {options.duration!r}: {exc}") from None
    if options.workers:
        updates["load"] = scenario.load.model_copy(update={"workers": options.workers})
    return scenario.model_copy(update=updates) if updates else scenario


def run_scenario(options: RunOptions, console: Console) -> int:
    scenario = resolve(options)
    influx = resolve_influx(scenario.sink.influxdb, options.influx)  # config errors: now
    name = options.lab_name or scenario.lab.name or f"r{secrets.token_hex(3)}"
    lab.preflight(scenario, name)
    label = f"{scenario.name}-{scenario.variant}" if scenario.variant else scenario.name
    run = RunDir.create(label, options.runs_root)
    run.write_scenario(scenario)
    run.journal.event(
        "run.start",
        scenario=scenario.name,
        variant=scenario.variant,
        lab=name,
        duration=scenario.duration,
    )
    console.print(
        f"run [bold]{label}[/] for {scenario.duration:g}s in lab {name}; "
        f"run directory {run.path}"
    )
    result: LoadResult | None = None
    outcome = "error"
    sink: Sink | None = None
    try:
        with sigterm_raises():
            sink = open_sink(scenario, run, influx, console)  # InfluxDB down: fail before lab.up
            state = lab.up(scenario, name, run)
            schedule = FaultSchedule(
                scenario.faults, state, run.journal, annotate=sink.annotate
            )
            schedule.validate()  # every fault checked before the load starts
            with sampling(scenario, state, run, sink):
                result = drive_load(scenario, state, run, console, schedule)
            outcome = "done"
    except (KeyboardInterrupt, Terminated):
        outcome = "interrupted"
        raise KeyboardInterrupt from None
    finally:
        removed = lab.down(name)
        run.journal.event("lab.down", lab=name, removed=len(removed))
        sink_stats = sink.close() if sink is not None else None  # journals sink.stats
        run.journal.event("run.end", outcome=outcome)
        run.close()
        chown_to_invoker(run.path)
    summary = summarize(run.path, result)
    if sink_stats is not None:
        summary["sink"] = sink_stats.as_dict()
    verdicts = check_expectations(scenario, run.path)
    summary["expectations"] = [v.as_dict() for v in verdicts]
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(console, summary)
    print_verdicts(console, verdicts)
    if options.report:
        try:
            report = write_report(run.path)
            console.print(f"report: {report.html_path}")
        except ChaosError as exc:  # the run's verdict stands without its report
            console.print(Text(f"no report: {exc.message}", "yellow"))
    chown_to_invoker(run.path)
    return EXIT_EXPECTATION_FAILED if any(not v.passed for v in verdicts) else 0


EXIT_EXPECTATION_FAILED = 10


def check_expectations(scenario: Scenario, run_path: Path) -> list[Verdict]:
    if not scenario.expect:
        return []
    points = read_points(run_path / "samples.lp")
    timeline = Timeline.from_journal(read_journal(run_path / "journal.jsonl"))
    return evaluate(scenario, points, timeline)  # type: ignore[arg-type]


def print_verdicts(console: Console, verdicts: list[Verdict]) -> None:
    if not verdicts:
        return
    table = Table("", "expectation", "observed", box=None, pad_edge=False)
    for v in verdicts:
        mark = Text("PASS", "bold green") if v.passed else Text("FAIL", "bold red")
        observed = "no data" if v.observed is None else f"{v.observed:g}"
        table.add_row(mark, Text(v.label or v.describe()), Text(f"{observed}  ({v.detail})"))
    console.print(table)
    failed = sum(not v.passed for v in verdicts)
    if failed:
        console.print(Text(f"{failed} of {len(verdicts)} expectations failed", "bold red"))
    else:
        console.print(Text(f"all {len(verdicts)} expectations passed", "bold green"))


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
def sampling(scenario: Scenario, state: LabState, run: RunDir, sink: Sink) -> Iterator[None]:
    """Sample every role namespace and Locust's per-second stats into ``sink`` while the
    body runs; one last tick after it (Locust writes its last rows when it exits). The
    collectors are closed on every path: they hold the lab's namespaces open."""
    spec = scenario.collectors
    refs: list[NetnsRef] = []
    collectors: list[Collector] = []
    sampler: Sampler | None = None
    try:
        for role in spec.roles:
            namespace = state.namespaces.get(role)
            if namespace is None:  # e.g. no proxy namespace with an external proxy
                continue
            refs.append(NetnsRef.named(namespace))
            collectors += collectors_for(
                refs[-1], tags={"role": role}, zombie_idle_s=spec.zombie_idle
            )
            if role == "origin":  # the lab's counter of packets that bypassed the proxy
                collectors.append(EscapeCounter(namespace, tags={"role": role}))
        # the file LocustRun writes with --csv <run>/locust/locust --csv-full-history
        history = run.path / "locust" / "locust_stats_history.csv"
        client = state.namespaces["client"]
        collectors.append(LocustHistory(history, netns=client, tags={"role": "client"}))
        sampler = Sampler(collectors, interval=spec.interval, on_samples=sink.write).start()
        run.journal.event("sampler.start", collectors=len(collectors), interval=spec.interval)
        yield
        sampler.stop()
        sink.write(sampler.tick())
    finally:
        if sampler is not None:
            sampler.stop()
            stats = sampler.stats
            run.journal.event(
                "sampler.stop", ticks=stats.ticks, skipped=stats.skipped_ticks, errors=stats.errors
            )
        for collector in collectors:
            collector.close()
        for ref in refs:
            ref.close()


def drive_load(
    scenario: Scenario, state: LabState, run: RunDir, console: Console, schedule: FaultSchedule
) -> LoadResult:
    load = scenario.load
    workers = load.workers or os.cpu_count() or 1
    client_ns = state.namespaces["client"]
    target = state.target or state.proxy
    scheme = "http" if load.user == "http" else "tcp"
    host = f"{scheme}://{target['host']}:{target['port']}"
    args = user_options(load, str(state.origin["protocol"]), state.client_addresses, workers)
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
        spawn=lambda argv, **kw: netns.popen(client_ns, argv, **kw),
    )
    run.journal.event("load.start", workers=workers, users=load.users, host=host)
    schedule.start()
    try:
        result = locust.run()
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
    stats = run_path / "origin-stats.json"
    if stats.exists():
        summary["origin"] = json.loads(stats.read_text())
    proxy_log = run_path / "logs" / "proxy.log"
    if proxy_log.exists():
        summary["proxy_logged"] = len(proxies.parse_log(proxy_log))
    return summary


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table("", "", box=None, pad_edge=False, show_header=False)
    load = summary.get("load", {})
    for key, value in load.items():
        if not isinstance(value, dict | list):
            table.add_row(key.replace("_", " "), str(value))
    for failure, count in load.get("failures_by_class", {}).items():
        table.add_row(f"  failures {failure}", str(count))
    origin = summary.get("origin", {})
    if origin:
        table.add_row("origin requests served", str(origin.get("requests", "?")))
    if "proxy_logged" in summary:
        table.add_row("proxy log entries", str(summary["proxy_logged"]))
    sink = summary.get("sink", {})
    if sink:
        table.add_row("samples recorded", str(sink["recorded"]))
    if sink.get("influxdb"):
        counts = ("written", "spooled", "replayed", "dropped", "left_in_spool")
        table.add_row(
            "InfluxDB points", ", ".join(f"{k.replace('_', ' ')} {sink[k]}" for k in counts)
        )
    console.print(table)
    console.print(f"results in {summary['run_dir']}")
