"""Capacity mode: ``chaos sweep`` steps the new-connection rate up in one lab and reports the
knee (the highest rate that held) and which resource ran out first.

One lab, one Locust run with ``--rate-steps``: the users raise the rate themselves every
``step_duration`` seconds, as a capacity run by hand would, so the kernel state of one step
(TIME_WAIT, port use, conntrack entries) carries into the next, and the lab is built once.

Each step is judged afterwards from the run directory:

* its window is the seconds whose target was that step's rate in ``locust/rate.csv`` (the
  master's per-second target and achieved rate), so windows follow the users' own clock;
* achieved rate and failures come from ``rate.csv``, failures by class from the
  ``locust_failures`` points (``SlowConnect`` is a class like ``EADDRNOTAVAIL``);
* the scenario's ``when: end`` expectations are checked over the step's window, with
  ``rate`` meaning the step's target;
* resource indicators come from ``samples.lp``: port budget utilisation, TCPTimeWaitOverflow,
  conntrack utilisation and insert_failed/drop/early_drop, and the CPU of the proxy and
  origin processes.

A step passes when it had no failure, reached 90 % of its target and met every expectation.
The knee is the last step that passed before the first one that did not.

Early stop: past the knee, more steps only pile on. While the load runs, :class:`EarlyStop`
reads ``rate.csv`` once a second; once a step has ended with failures or under 90 % of its
target, the run goes on for ``extra_steps`` more steps (default 1: one more step confirms
the break) and then ends (journal ``load.stopped_early``). The master writes ``rate.csv``
about 5 s late (each second must hold every worker's report), so the stop lands a few
seconds into the step after those: that step, cut short, and the later ones are listed as
not run, not judged. ``chaos sweep --all-steps`` runs every step. The first exhausted
resource is the first indicator to fire, in step order: ``ports``, ``time_wait_buckets``,
``conntrack``, ``proxy_cpu``, ``origin`` (CPU saturated, or the rate fell short with no other
cause).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chaos.errors import ChaosError, ExpectationFailed
from chaos.expect import Timeline, evaluate
from chaos.record.lineproto import Point, read_points
from chaos.report import write_report
from chaos.run import RunOptions, resolve, run_scenario
from chaos.scenario.model import Scenario

MAX_STEPS = 100
SUSTAINED = 0.9  # a step holds when it reaches this share of its target
PORTS_FULL = 0.95  # port budget utilisation that counts as exhausted
CONNTRACK_FULL = 0.95
CPU_FULL = 0.9  # process CPU over the cores it can use
PORT_CLASSES = ("EADDRNOTAVAIL", "SlowConnect")  # failures that mean "no local port"
CONNTRACK_COUNTERS = ("insert_failed", "drop", "early_drop")
RESOURCES = ("ports", "time_wait_buckets", "conntrack", "proxy_cpu", "origin")


# --- the rates -------------------------------------------------------------------------------


def parse_rates(
    rates: str | None, start: float | None, stop: float | None, step: float | None
) -> list[float]:
    """``--rates 50,100`` or ``--from R0 --to R1 --step S`` (R0, R0+S, ... up to R1)."""
    ranged = (start, stop, step)
    if rates and any(v is not None for v in ranged):
        raise ChaosError(
            "give either --rates or --from/--to/--step, not both",
            "e.g. `--rates 500,1000,2000`, or `--from 500 --to 2000 --step 500`",
        )
    if rates:
        try:
            out = [float(part) for part in rates.replace(" ", "").split(",") if part]
        except ValueError:
            raise ChaosError(
                f"--rates {rates!r} is not a comma-separated list of numbers",
                "e.g. --rates 500,1000,2000",
            ) from None
    elif all(v is not None for v in ranged):
        assert start is not None and stop is not None and step is not None
        if step <= 0 or stop < start:
            raise ChaosError(
                f"--from {start:g} --to {stop:g} --step {step:g} is an empty range",
                "--to must be at least --from, and --step positive",
            )
        count = math.floor((stop - start) / step + 1e-9) + 1
        out = [round(start + i * step, 6) for i in range(count)]
    else:
        raise ChaosError(
            "a sweep needs its rates",
            "give --rates 500,1000,2000, or all of --from, --to and --step",
        )
    if not out or any(r <= 0 for r in out):
        raise ChaosError(f"rates must be positive, got {out}", "e.g. --rates 500,1000,2000")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ChaosError(f"rates must rise step by step, got {out}", "sort them: 500,1000,2000")
    if len(out) > MAX_STEPS:
        raise ChaosError(
            f"{len(out)} steps is more than {MAX_STEPS}", "use a larger --step or fewer --rates"
        )
    return out


def sweep_scenario(base: Scenario, rates: list[float], step_duration: float) -> Scenario:
    """The scenario the lab runs: the users ramp through ``rates``; the expectations are
    left out of the run (they are judged per step here, not over the whole ramp)."""
    if base.remote is not None:
        raise ChaosError(
            f"scenario {base.name!r} runs against remote hosts; a sweep needs a lab",
            "sweep a copy of the scenario without `remote:`",
        )
    if step_duration < 2:
        raise ChaosError(
            f"--step-duration {step_duration:g}s is too short to measure a step",
            "use 5s or more (20s gives Locust's moving averages time to settle)",
        )
    load = base.load.model_copy(update={"rate_steps": rates, "step_duration": step_duration})
    return base.model_copy(
        update={"load": load, "duration": len(rates) * step_duration, "expect": []}
    )


# --- judging the steps ------------------------------------------------------------------------


@dataclass
class Step:
    target: float
    start: float  # wall seconds, [start, end)
    end: float
    seconds: int
    achieved: float = 0.0
    connections: int = 0
    failures: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    ports: float | None = None  # highest port budget utilisation, 0..1
    ports_role: str | None = None
    tw_overflow: int = 0
    conntrack: float | None = None
    conntrack_errors: int = 0
    proxy_cpu: float | None = None  # mean busy share of the proxy's cores, 0..1
    origin_cpu: float | None = None
    expectations: list[dict[str, Any]] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    passed: bool = False
    why: str = ""


@dataclass
class SweepResult:
    scenario: str
    step_duration: float
    steps: list[Step]
    knee: float | None
    first_exhausted: str | None
    evidence: str
    verdict: str
    skipped_expectations: int = 0
    not_run: list[float] = field(default_factory=list)  # rates never reached (early stop)
    stopped_early: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _windows_from_rate_csv(path: Path, rates: list[float]) -> list[tuple[float, list[dict]]]:
    """(target, rows) per run of consecutive seconds with one target, in order."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        return []
    out: list[tuple[float, list[dict]]] = []
    for row in rows:
        try:
            target = float(row["target_rate"])
            parsed = {k: float(row[k]) for k in ("time", "achieved_rate", "failures")}
        except (KeyError, ValueError):
            continue
        if out and out[-1][0] == target:
            out[-1][1].append(parsed)
        elif target in rates:
            out.append((target, [parsed]))
    return out


def _in(points: Iterable[Point], measurement: str, start: float, end: float) -> list[Point]:
    lo, hi = int(start * 1e9), int(end * 1e9)
    return [
        p
        for p in points
        if p.measurement == measurement and p.time_ns is not None and lo <= p.time_ns < hi
    ]


def _num(point: Point, name: str) -> float | None:
    value = point.fields.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _indicators(step: Step, by_measurement: dict[str, list[Point]]) -> None:
    a, b = step.start, step.end
    for p in _in(by_measurement.get("locust_failures", []), "locust_failures", a, b):
        count = _num(p, "count")
        if count:
            name = p.tags.get("class", "?")
            step.classes[name] = step.classes.get(name, 0) + int(count)
    for p in _in(by_measurement.get("port_budget_summary", []), "port_budget_summary", a, b):
        util = _num(p, "max_utilisation")
        if util is not None and (step.ports is None or util > step.ports):
            step.ports, step.ports_role = util, p.tags.get("role")
    for p in _in(by_measurement.get("tcp_counters", []), "tcp_counters", a, b):
        step.tw_overflow += int(_num(p, "TCPTimeWaitOverflow") or 0)
    for p in _in(by_measurement.get("conntrack", []), "conntrack", a, b):
        util = _num(p, "utilisation")
        if util is not None:
            step.conntrack = max(step.conntrack or 0.0, util)
        step.conntrack_errors += int(sum(_num(p, k) or 0 for k in CONNTRACK_COUNTERS))
    busy: dict[str, list[float]] = defaultdict(list)
    for p in _in(by_measurement.get("process", []), "process", a, b):
        value = _num(p, "busy")
        if value is not None:
            busy[p.tags.get("role", "")].append(value)
    if busy.get("proxy"):
        step.proxy_cpu = sum(busy["proxy"]) / len(busy["proxy"])
    if busy.get("origin"):
        step.origin_cpu = sum(busy["origin"]) / len(busy["origin"])


def _exhausted(step: Step) -> list[str]:
    """The resource indicators that fired in this step, in :data:`RESOURCES` order."""
    out = []
    if (step.ports or 0) >= PORTS_FULL or any(c in step.classes for c in PORT_CLASSES):
        out.append("ports")
    if step.tw_overflow > 0:
        out.append("time_wait_buckets")
    if (step.conntrack or 0) >= CONNTRACK_FULL or step.conntrack_errors > 0:
        out.append("conntrack")
    if (step.proxy_cpu or 0) >= CPU_FULL:
        out.append("proxy_cpu")
    if (step.origin_cpu or 0) >= CPU_FULL:
        out.append("origin")
    return out


def _evidence(resource: str, step: Step) -> str:
    at = f"at {step.target:g}/s"
    match resource:
        case "ports":
            classes = [c for c in PORT_CLASSES if c in step.classes]
            util = f"port budget {step.ports or 0:.0%} used at the {step.ports_role}"
            return f"{util}{' and ' + ', '.join(classes) if classes else ''} {at}"
        case "time_wait_buckets":
            return f"{step.tw_overflow} TCPTimeWaitOverflow {at}"
        case "conntrack":
            return (
                f"conntrack {step.conntrack or 0:.0%} full, "
                f"{step.conntrack_errors} insert_failed/drop/early_drop {at}"
            )
        case "proxy_cpu":
            return f"proxy CPU {step.proxy_cpu or 0:.0%} of its cores {at}"
    cpu = f"origin CPU {step.origin_cpu:.0%}" if step.origin_cpu is not None else "origin"
    return f"{cpu}; achieved {step.achieved:.0f}/s of {step.target:g}/s with no other cause"


def analyse(
    run_path: Path,
    scenario: Scenario,
    rates: list[float],
    step_duration: float,
    stop: EarlyStop | None = None,
) -> SweepResult:
    """Judge every step of a finished sweep run (``scenario``: with its expectations);
    after an early ``stop``, only the steps it judged complete."""
    windows = _windows_from_rate_csv(run_path / "locust" / "rate.csv", rates)
    if stop is not None and stop.complete is not None:
        windows = windows[: stop.complete]
    if not windows:
        raise ChaosError(
            f"{run_path}/locust/rate.csv has no per-second rates: the steps cannot be judged",
            "see logs/locust-master.log: the load probably never started",
        )
    points = read_points(run_path / "samples.lp")
    by_measurement: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        by_measurement[p.measurement].append(p)
    checked = [e for e in scenario.expect if e.when == "end"]
    steps: list[Step] = []
    for target, rows in windows:
        start, end = rows[0]["time"], rows[-1]["time"] + 1
        # The first second of a step still carries the previous rate and a step's last one
        # (and the run's last second is cut short by Locust's stop): measure the rest
        settled = rows[1:-1] if len(rows) > 3 else rows
        step = Step(target=target, start=start, end=end, seconds=len(rows))
        step.achieved = sum(r["achieved_rate"] for r in settled) / len(settled)
        step.connections = int(sum(r["achieved_rate"] for r in rows))
        step.failures = int(sum(r["failures"] for r in rows))
        _indicators(step, by_measurement)
        if checked:
            load = scenario.load.model_copy(update={"rate": target})
            judged = scenario.model_copy(update={"load": load, "expect": checked})
            verdicts = evaluate(judged, points, Timeline(start, end))  # type: ignore[arg-type]
            step.expectations = [v.as_dict() for v in verdicts]
        step.exhausted = _exhausted(step)
        reasons = []
        if step.failures or step.classes:  # a SlowConnect may succeed: a class of its own
            classes = ", ".join(f"{k} {v}" for k, v in sorted(step.classes.items()))
            reasons.append(f"{step.failures} failures" + (f" ({classes})" if classes else ""))
        if step.achieved < SUSTAINED * target:
            reasons.append(f"achieved {step.achieved:.0f}/s < {SUSTAINED:.0%} of target")
        reasons += [
            f"expectation failed: {e['label'] or e['metric']}"
            for e in step.expectations
            if not e["passed"]
        ]
        step.passed, step.why = not reasons, "; ".join(reasons)
        steps.append(step)
    result = conclude(scenario.name, step_duration, steps, len(scenario.expect) - len(checked))
    if stop is not None and stop.complete is not None:
        result.not_run = rates[len(steps) :]
        result.stopped_early = stop.reason
    return result


def step_broke(target: float, rows: list[dict]) -> str | None:
    """Why a step failed, from its ``rate.csv`` rows alone (the live part of the verdict)."""
    settled = rows[1:-1] if len(rows) > 3 else rows
    achieved = sum(r["achieved_rate"] for r in settled) / len(settled)
    failures = int(sum(r["failures"] for r in rows))
    if failures:
        return f"{target:g}/s had {failures} failures"
    if achieved < SUSTAINED * target:
        return f"{target:g}/s achieved {achieved:.0f}/s (< {SUSTAINED:.0%})"
    return None


@dataclass
class EarlyStop:
    """The ``stop_early`` check of a sweep run: stop ``extra_steps`` steps after the first
    step that broke (see the module docstring). Once it fired, ``complete`` is the number of
    steps it saw finished (the ones to judge) and ``reason`` says why."""

    rates: list[float]
    extra_steps: int = 1
    complete: int | None = None
    reason: str | None = None

    def __call__(self, run_path: Path) -> str | None:
        windows = _windows_from_rate_csv(run_path / "locust" / "rate.csv", self.rates)
        if not windows or windows[-1][0] == self.rates[-1]:
            return None  # the last step is under way: stopping would only leave it unjudged
        finished = windows[:-1]  # the last window is the step still running
        broke = next(
            (i for i, (target, rows) in enumerate(finished) if step_broke(target, rows)), None
        )
        if broke is None or len(finished) - 1 - broke < self.extra_steps:
            return None
        target, rows = finished[broke]
        self.complete = broke + 1 + self.extra_steps
        self.reason = f"{step_broke(target, rows)}; stopped {self.extra_steps} step(s) later"
        return self.reason


def conclude(name: str, step_duration: float, steps: list[Step], skipped: int) -> SweepResult:
    first_bad = next((i for i, s in enumerate(steps) if not s.passed), None)
    knee = None
    if first_bad is not None and first_bad > 0:
        knee = steps[first_bad - 1].target
    resource, evidence = None, ""
    for step in steps:
        if step.exhausted:
            resource = step.exhausted[0]
            evidence = _evidence(resource, step)
            break
    if resource is None and first_bad is not None:  # broke with no indicator: the far end
        resource, evidence = "origin", _evidence("origin", steps[first_bad])
        if not steps[first_bad].achieved < SUSTAINED * steps[first_bad].target:
            resource = None
            evidence = f"{steps[first_bad].why}; no resource indicator fired"
    if first_bad is None:
        verdict = f"no step broke: the knee is above {steps[-1].target:g}/s"
    elif knee is None:
        verdict = f"the first step ({steps[0].target:g}/s) already broke: {steps[0].why}"
    else:
        broke = steps[first_bad]
        verdict = f"knee {knee:g}/s; {broke.target:g}/s broke ({broke.why})"
    return SweepResult(name, step_duration, steps, knee, resource, evidence, verdict, skipped)


# --- output -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def print_sweep(console: Console, result: SweepResult) -> None:
    table = Table(
        "target/s", "achieved/s", "failures", "classes", "ports", "TW ovf", "conntrack",
        "proxy cpu", "origin cpu", "", box=None, pad_edge=False,
    )  # fmt: skip
    for s in result.steps:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(s.classes.items(), key=lambda kv: -kv[1]))
        ports = _pct(s.ports) + (f" {s.ports_role}" if s.ports_role and s.ports else "")
        mark = Text("PASS", "bold green") if s.passed else Text("FAIL", "bold red")
        table.add_row(
            f"{s.target:g}", f"{s.achieved:,.0f}", str(s.failures), Text(classes or "-"), ports,
            str(s.tw_overflow), _pct(s.conntrack), _pct(s.proxy_cpu), _pct(s.origin_cpu), mark,
        )  # fmt: skip
    console.print(table)
    if result.skipped_expectations:
        console.print(
            f"{result.skipped_expectations} expectation(s) not checked per step "
            "(only `when: end` ones are: a sweep has no fault phases)"
        )
    if result.not_run:
        console.print(
            f"not run: {', '.join(f'{r:g}' for r in result.not_run)}/s "
            f"(stopped early: {result.stopped_early}; --all-steps runs them)"
        )
    style = "bold green" if result.knee is not None else "bold yellow"
    console.print(Text(f"sweep: {result.verdict}", style))
    if result.first_exhausted:
        console.print(
            Text.assemble(
                ("first exhausted: ", "bold"),
                (result.first_exhausted, "bold"),
                f" ({result.evidence})",
            )
        )
    elif result.evidence:
        console.print(f"first exhausted: unknown ({result.evidence})")


def record(run_path: Path, result: SweepResult) -> None:
    """``sweep.json`` in the run directory, and the verdict in ``summary.json``."""
    (run_path / "sweep.json").write_text(json.dumps(result.as_dict(), indent=2))
    summary_path = run_path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["sweep"] = {
        "knee": result.knee,
        "first_exhausted": result.first_exhausted,
        "evidence": result.evidence,
        "verdict": result.verdict,
        "rates": [s.target for s in result.steps],
        "not_run": result.not_run,
        "stopped_early": result.stopped_early,
    }
    summary_path.write_text(json.dumps(summary, indent=2))


# --- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepOptions:
    run: RunOptions  # scenario, variant, lab name, workers, runs dir, report, progress
    rates: list[float]
    step_duration: float
    extra_steps: int | None = 1  # steps run after the first that broke; None: all steps


def run_sweep(options: SweepOptions, console: Console) -> int:
    """Build the lab once, ramp through the rates, judge each step. Exit 0 when a knee was
    found, 10 when none was (the first step broke, or no step did)."""
    base = resolve(options.run)
    swept = sweep_scenario(base, options.rates, options.step_duration)
    console.print(
        f"sweep [bold]{base.name}[/]: {len(options.rates)} steps of "
        f"{options.step_duration:g}s, {', '.join(f'{r:g}' for r in options.rates)} conn/s"
    )

    stop = None if options.extra_steps is None else EarlyStop(options.rates, options.extra_steps)

    def judge(run_path: Path, code: int) -> int:
        result = analyse(run_path, base, options.rates, options.step_duration, stop)
        record(run_path, result)
        if options.run.report:  # again, now with the sweep's steps in it
            write_report(run_path)
        print_sweep(console, result)
        console.print(f"sweep results: {run_path / 'sweep.json'}")
        return 0 if result.knee is not None else ExpectationFailed.exit_code

    return run_scenario(options.run, console, scenario=swept, on_done=judge, stop_early=stop)
