"""Capacity mode: ``chaos sweep`` steps the new-connection rate up in one lab and reports
the knee (the highest rate that held) and which resource ran out first.

One lab, one Locust run with ``--rate-steps``: the users raise the rate themselves every
``step_duration`` seconds, as a capacity run by hand would, so the kernel state of one step
(TIME_WAIT, port use, conntrack entries) carries into the next, and the lab is built once.

Each step is judged afterwards from the run directory, on the run's own clock:

* its seconds: step ``i`` holds the seconds of the ``load`` series (see
  :mod:`chaos.load.seconds`) whose middle falls in ``[s + i*d, s + (i+1)*d)``, where ``d``
  is the step duration and ``s`` where the users' rate schedule began: in the first second
  in which a connection started, as far into it as it fell short of the first step's rate.
  The schedule starts on each worker when it gets its users, which on a busy host is
  seconds after the master's start (``load.ramp`` in the journal), so the steps are measured
  on the workers' own clock; a step's first second is not measured anyway;
* connections and failures (by class, ``SlowConnect`` included) are summed over those
  seconds; the achieved rate is connections *started* per second over the settled ones
  (without a step's first and last seconds, which may carry part of the previous or next
  step's rate, and the load's last second, cut short by the stop);
* its p99 is the whole connection's (``total`` phase, connect to close) over the settled
  seconds, from the merged histograms;
* resource indicators come from ``samples.lp`` over the step's window: port budget
  utilisation, TCPTimeWaitOverflow, conntrack utilisation and insert_failed/drop/early_drop,
  the CPU of the proxy and origin processes, and the load generator's own limits: the CPU
  of every Locust process (master and workers, each bound to one core), the host's idle and
  steal time, and the controller's CPU.

**What decides a step.** A step passes when it had no failure, reached 90 % of its target,
kept its p99 at or under ``--max-p99`` (or the scenario's ``sweep.max_p99``) and met every
criterion of the scenario's ``sweep.expect`` (``when: end`` expectations over the step's
seconds, ``rate`` = the step's target). The scenario's own ``expect:`` is its *signature*
(e.g. "failures appear once the ports run out"): its ``when: end`` clauses are checked per
step and reported beside each step, but never decide it (a signature that needs failures
would fail every healthy step); phased clauses (baseline/during/after) are not checked, a
sweep has no fault phases of its own. The knee is the last step that passed before the first
one that did not.

**What ran out.** The first *system* indicator to fire, in step order: ``ports``,
``time_wait_buckets``, ``conntrack``, ``proxy_cpu``, ``origin`` (its CPU at the threshold);
each needs evidence above its threshold. When the first broken step shows none of them and
the load generator was saturated there (a Locust process at 90 % of its core, or the host
under 5 % idle or over 10 % steal), the limit is ``load_generator`` and the knee is only a
lower bound; the verdict says so. With no evidence at all, nothing is named.

Early stop: past the knee, more steps only pile on. While the load runs, :class:`EarlyStop`
reads the ``load`` series as the sink gets it (about 2 s after each second); once a step
has ended with failures or under 90 % of its target, the run goes on for ``extra_steps``
more steps (default 1: one more step confirms the break) and then ends (journal
``load.stopped_early``). The stop lands a moment into the step after those: that step, cut
short, and the later ones are listed as not run, not judged. ``chaos sweep --all-steps``
runs every step.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chaos.errors import ChaosError, ExpectationFailed
from chaos.expect import Timeline, evaluate
from chaos.load.seconds import (
    LATENCY_PHASE,
    LoadSecond,
    is_load_point,
    issuing_end,
    load_seconds,
    totals,
    window_latency_us,
)
from chaos.record import schema
from chaos.record.lineproto import Point, read_points
from chaos.record.point import Sample
from chaos.record.rundir import RunFiles
from chaos.report import write_report
from chaos.run import RunOptions, resolve, run_scenario
from chaos.scenario.model import Expectation, Scenario

MAX_STEPS = 100
SUSTAINED = 0.9  # a step holds when it reaches this share of its target
PORTS_FULL = 0.95  # port budget utilisation that counts as exhausted
CONNTRACK_FULL = 0.95
CPU_FULL = 0.9  # process CPU over the cores it can use
GENERATOR_FULL = 0.9  # a Locust process's share of its one core
HOST_IDLE_MIN = 0.05  # the host under this idle share is saturated
HOST_STEAL_MAX = 0.10  # ... and over this steal share
PORT_CLASSES = ("EADDRNOTAVAIL", "SlowConnect")  # failures that mean "no local port"
CONNTRACK_COUNTERS = ("insert_failed", "drop", "early_drop")
RESOURCES = ("ports", "time_wait_buckets", "conntrack", "proxy_cpu", "origin")
GENERATOR = "load_generator"


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
            "use 3s or more (a step's first second carries the previous rate)",
        )
    load = base.load.model_copy(
        update={"rate": None, "rate_steps": rates, "step_duration": step_duration}
    )
    return base.model_copy(
        update={"load": load, "duration": len(rates) * step_duration, "expect": []}
    )


# --- judging the steps ------------------------------------------------------------------------


@dataclass
class Step:
    target: float
    start: float  # wall seconds of its load seconds, [start, end)
    end: float
    seconds: int
    scheduled: float = 0.0  # wall time the users' schedule switched to this step's rate
    achieved: float = 0.0  # connections started per second, settled seconds
    connections: int = 0  # connections started in the step
    failures: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    p99_us: int | None = None  # whole connections, settled seconds
    ports: float | None = None  # highest port budget utilisation, 0..1
    ports_role: str | None = None
    tw_overflow: int = 0
    conntrack: float | None = None
    conntrack_errors: int = 0
    proxy_cpu: float | None = None  # mean busy share of the proxy's cores, 0..1
    origin_cpu: float | None = None
    generator_cpu: float | None = None  # the busiest Locust process, share of its core
    generator_process: str | None = None  # which one (locust-worker / locust-master)
    host_idle: float | None = None  # mean share of the host's CPUs idle
    host_steal: float | None = None
    controller_cpu: float | None = None  # the controller's CPU, share of one core
    expectations: list[dict[str, Any]] = field(default_factory=list)  # sweep.expect: decide
    signature: list[dict[str, Any]] = field(default_factory=list)  # expect: reported only
    exhausted: list[str] = field(default_factory=list)
    saturated: bool = False  # the load generator (or its host) ran out at this step
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
    lower_bound: bool = False  # the generator, not the system, limited the knee
    max_p99_us: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule_start(seconds: Mapping[int, LoadSecond], first_rate: float) -> float | None:
    """Where the users' rate schedule began: in the first second of the load series in which
    a connection started, as far into it as that second fell short of the first step's rate
    (11 connections at 50/s: 0.78 s into it). See the module docstring."""
    first = next((row for row in seconds.values() if row.started > 0), None)
    if first is None:
        return None
    return first.second + 1.0 - min(1.0, first.started / first_rate)


def step_of(second: int, start: float, step_duration: float) -> int:
    """The step a second of the load series belongs to: the one holding its middle."""
    return math.floor((second + 0.5 - start) / step_duration)


@dataclass(frozen=True)
class StepSeconds:
    index: int
    start: float  # wall seconds of the step's window
    end: float
    rows: list[LoadSecond]  # every second of the step
    settled: list[LoadSecond]  # the ones its rate is measured over

    @property
    def window(self) -> tuple[float, float]:
        """The seconds of the step (for the sampled indicators), [start, end)."""
        return (float(self.rows[0].second), float(self.rows[-1].second + 1))

    @property
    def settled_window(self) -> tuple[float, float]:
        return (float(self.settled[0].second), float(self.settled[-1].second + 1))


def _inner(rows: list[LoadSecond]) -> list[LoadSecond]:
    """A step's seconds without its first and last (see :func:`step_seconds`)."""
    return rows[1:-1] if len(rows) > 3 else rows[1:] if len(rows) > 1 else rows


def step_seconds(
    seconds: Mapping[int, LoadSecond], start: float, rates: list[float], step_duration: float
) -> list[StepSeconds]:
    """The load series cut into steps (in order; steps without a second are left out).

    Settled: without a step's first and last seconds (they may carry part of the previous or
    the next step's rate: the schedule's start is known to a fraction of a second) and without
    the load's last second (cut short by the stop), unless that leaves nothing."""
    last = issuing_end(seconds)
    rows: dict[int, list[LoadSecond]] = defaultdict(list)
    for second, row in seconds.items():
        if last is not None and second >= last:
            continue  # after the load stopped issuing: the drain, not a step
        index = step_of(second, start, step_duration)
        if 0 <= index < len(rates):
            rows[index].append(row)
    out = []
    for index in sorted(rows):
        mine = rows[index]
        settled = _inner(mine)
        if last is not None and len(settled) > 1 and settled[-1].second + 1 >= last:
            settled = settled[:-1]
        begin = start + index * step_duration
        out.append(StepSeconds(index, begin, begin + step_duration, mine, settled))
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


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _indicators(step: Step, by_measurement: dict[str, list[Point]], a: float, b: float) -> None:
    def points(measurement: str) -> list[Point]:
        return _in(by_measurement.get(measurement, []), measurement, a, b)

    for p in points(schema.PORT_BUDGET_SUMMARY):
        util = _num(p, "max_utilisation")
        if util is not None and (step.ports is None or util > step.ports):
            step.ports, step.ports_role = util, p.tags.get("role")
    for p in points(schema.TCP_COUNTERS):
        step.tw_overflow += int(_num(p, "TCPTimeWaitOverflow") or 0)
    for p in points(schema.CONNTRACK):
        util = _num(p, "utilisation")
        if util is not None:
            step.conntrack = max(step.conntrack or 0.0, util)
        step.conntrack_errors += int(sum(_num(p, k) or 0 for k in CONNTRACK_COUNTERS))
    busy: dict[str, list[float]] = defaultdict(list)
    generator: dict[tuple[str, str], list[float]] = defaultdict(list)  # (process, pid)
    for p in points(schema.PROCESS):
        value = _num(p, "busy")
        if value is None:
            continue
        if p.tags.get("process", "").startswith("locust"):
            generator[(p.tags["process"], p.tags.get("pid", ""))].append(value)
        else:
            busy[p.tags.get("role", "")].append(value)
    step.proxy_cpu = _mean(busy.get("proxy", []))
    step.origin_cpu = _mean(busy.get("origin", []))
    if generator:
        (name, _), values = max(generator.items(), key=lambda kv: _mean(kv[1]) or 0.0)
        step.generator_cpu, step.generator_process = _mean(values), name
    host = points(schema.HOST_CPU)
    step.host_idle = _mean([v for p in host if (v := _num(p, "idle")) is not None])
    step.host_steal = _mean([v for p in host if (v := _num(p, "steal")) is not None])
    controller = [_num(p, "cpu_pct") for p in points(schema.CONTROLLER)]
    step.controller_cpu = _mean([v / 100 for v in controller if v is not None])


def _exhausted(step: Step) -> list[str]:
    """The system resource indicators that fired in this step, in :data:`RESOURCES` order;
    each needs evidence above its threshold."""
    out = []
    if (step.ports or 0) >= PORTS_FULL or _port_classes(step):
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


def saturation(step: Step) -> str | None:
    """What ran out on the load generator's side at this step, in words (None: nothing): a
    Locust process used its whole core, or the host it runs on had no CPU left."""
    if (step.generator_cpu or 0) >= GENERATOR_FULL:
        return (
            f"load generator saturated (busiest {step.generator_process} "
            f"{step.generator_cpu:.0%} of its core)"
        )
    if step.host_idle is not None and step.host_idle < HOST_IDLE_MIN:
        busiest = (
            f", busiest {step.generator_process} {step.generator_cpu:.0%} of its core"
            if step.generator_cpu is not None
            else ""
        )
        return f"host saturated ({step.host_idle:.0%} idle{busiest})"
    if (step.host_steal or 0) > HOST_STEAL_MAX:
        return f"host saturated ({step.host_steal:.0%} steal time)"
    return None


def generator_saturated(step: Step) -> bool:
    return saturation(step) is not None


def _port_classes(step: Step) -> list[str]:
    """The failure classes of the step that mean "no local port": EADDRNOTAVAIL, and
    SlowConnect (the kernel's port search) unless the generator's host was saturated, where
    a slow connect is as likely a starved client."""
    return [
        c
        for c in PORT_CLASSES
        if c in step.classes and (c != "SlowConnect" or not generator_saturated(step))
    ]


def _evidence(resource: str, step: Step) -> str:
    at = f"at {step.target:g}/s"
    match resource:
        case "ports":
            classes = _port_classes(step)
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
        case "origin":
            return f"origin CPU {step.origin_cpu or 0:.0%} of its cores {at}"
    return f"{saturation(step) or 'load generator'} {at}"


def _p99_us(run_path: Path, window: tuple[float, float], rows: list[LoadSecond]) -> int | None:
    """The p99 of whole connections over ``window``: merged from the seconds' histograms,
    else (a run directory without the series file) the worst second's p99."""
    merged = window_latency_us(run_path, *window)
    if merged:
        return int(merged["p99_us"])
    values = [v for r in rows if (v := r.percentile_us(LATENCY_PHASE, "p99")) is not None]
    return max(values) if values else None


def _check(
    scenario: Scenario, clauses: list[Expectation], target: float, points: list[Point],
    window: tuple[float, float],
) -> list[dict[str, Any]]:  # fmt: skip
    if not clauses:
        return []
    load = scenario.load.model_copy(update={"rate": target})
    judged = scenario.model_copy(update={"load": load, "expect": clauses})
    verdicts = evaluate(judged, points, Timeline(*window))  # type: ignore[arg-type]
    return [v.as_dict() for v in verdicts]


def analyse(
    run_path: Path,
    scenario: Scenario,
    rates: list[float],
    step_duration: float,
    stop: EarlyStop | None = None,
    max_p99_us: int | None = None,
) -> SweepResult:
    """Judge every step of a finished sweep run (``scenario``: with its expectations);
    after an early ``stop``, only the steps it judged complete."""
    points = read_points(run_path / "samples.lp")
    seconds = load_seconds(points)
    start = schedule_start(seconds, rates[0])
    steps_seconds = step_seconds(seconds, start, rates, step_duration) if start else []
    if stop is not None and stop.complete is not None:
        steps_seconds = [s for s in steps_seconds if s.index < stop.complete]
    if not steps_seconds:
        raise ChaosError(
            f"{run_path}/samples.lp has no per-second load series: the steps cannot be judged",
            "see logs/locust-master.log: the load probably never started",
        )
    by_measurement: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        by_measurement[p.measurement].append(p)
    sweep = scenario.sweep
    criteria = list(sweep.expect) if sweep else []
    signature = [e for e in scenario.expect if e.when == "end"]
    if max_p99_us is None and sweep and sweep.max_p99 is not None:
        max_p99_us = round(sweep.max_p99 * 1e6)
    steps: list[Step] = []
    for part in steps_seconds:
        target = rates[part.index]
        window = part.window
        step = Step(target=target, start=window[0], end=window[1], seconds=len(part.rows),
                    scheduled=round(part.start, 3))  # fmt: skip
        counted = totals(part.rows)
        step.achieved = totals(part.settled).rate
        step.connections, step.failures = counted.started, counted.failed
        step.classes = counted.classes
        step.p99_us = _p99_us(run_path, part.settled_window, part.settled)
        _indicators(step, by_measurement, *window)
        step.expectations = _check(scenario, criteria, target, points, window)
        step.signature = _check(scenario, signature, target, points, window)
        step.exhausted = _exhausted(step)
        step.saturated = generator_saturated(step)
        step.why = "; ".join(_reasons(step, max_p99_us))
        step.passed = not step.why
        steps.append(step)
    skipped = len(scenario.expect) - len(signature)
    result = conclude(scenario.name, step_duration, steps, skipped)
    result.max_p99_us = max_p99_us
    if stop is not None and stop.complete is not None:
        result.not_run = rates[len(steps) :]
        result.stopped_early = stop.reason
    return result


def _reasons(step: Step, max_p99_us: int | None) -> list[str]:
    """Why a step broke (empty: it held)."""
    reasons = []
    if step.failures or step.classes:  # a SlowConnect may succeed: a class of its own
        classes = ", ".join(f"{k} {v}" for k, v in sorted(step.classes.items()))
        reasons.append(f"{step.failures} failures" + (f" ({classes})" if classes else ""))
    if step.achieved < SUSTAINED * step.target:
        reasons.append(f"achieved {step.achieved:.0f}/s < {SUSTAINED:.0%} of target")
    if max_p99_us is not None and step.p99_us is not None and step.p99_us > max_p99_us:
        reasons.append(f"p99 {_ms(step.p99_us)} > {_ms(max_p99_us)}")
    reasons += [
        f"criterion failed: {e['label'] or e['metric']}"
        for e in step.expectations
        if not e["passed"]
    ]
    return reasons


def _ms(us: int | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.1f} ms" if us < 100_000 else f"{us / 1000:,.0f} ms"


def step_broke(target: float, rows: list[LoadSecond]) -> str | None:
    """Why a step failed, from its load seconds alone (the live part of the verdict)."""
    settled = _inner(rows)
    failures = totals(rows).failed
    if failures:
        return f"{target:g}/s had {failures} failures"
    achieved = totals(settled).rate
    if achieved < SUSTAINED * target:
        return f"{target:g}/s achieved {achieved:.0f}/s (< {SUSTAINED:.0%})"
    return None


@dataclass
class EarlyStop:
    """The ``stop_early`` check of a sweep run: stop ``extra_steps`` steps after the first
    step that broke (see the module docstring). It reads the ``load`` series from the
    samples on their way to the sink (:meth:`observe`); once it fired, ``complete`` is the
    number of steps it saw finished (the ones to judge) and ``reason`` says why."""

    rates: list[float]
    step_duration: float
    extra_steps: int = 1
    complete: int | None = None
    reason: str | None = None
    seen: dict[int, LoadSecond] = field(default_factory=dict)
    _points: list[Sample] = field(default_factory=list)

    def observe(self, samples: list[Sample]) -> None:
        self._points += [s for s in samples if is_load_point(s)]

    def __call__(self, run_path: Path) -> str | None:
        self.seen = load_seconds(self._points)
        ramp = schedule_start(self.seen, self.rates[0])
        if ramp is None:
            return None
        latest = max(self.seen)
        if step_of(latest, ramp, self.step_duration) >= len(self.rates) - 1:
            return None  # the last step is under way: stopping would only leave it unjudged
        parts = step_seconds(self.seen, ramp, self.rates, self.step_duration)
        # a step is finished once the series has a second of the step after it
        finished = [p for p in parts if step_of(latest, ramp, self.step_duration) > p.index]
        broke = next((p for p in finished if step_broke(self.rates[p.index], p.rows)), None)
        if broke is None or finished[-1].index - broke.index < self.extra_steps:
            return None
        self.complete = broke.index + 1 + self.extra_steps
        cause = step_broke(self.rates[broke.index], broke.rows)
        self.reason = f"{cause}; stopped {self.extra_steps} step(s) later"
        return self.reason


def conclude(name: str, step_duration: float, steps: list[Step], skipped: int) -> SweepResult:
    """The knee, what ran out first, and the verdict in words (see the module docstring)."""
    first_bad = next((i for i, s in enumerate(steps) if not s.passed), None)
    knee = None
    if first_bad is not None and first_bad > 0:
        knee = steps[first_bad - 1].target
    upto = steps if first_bad is None else steps[: first_bad + 1]
    resource, evidence = None, ""
    for step in upto:
        if step.exhausted:
            resource = step.exhausted[0]
            evidence = _evidence(resource, step)
            break
    lower_bound = False
    if first_bad is not None and resource is None:
        broke = steps[first_bad]
        if broke.saturated:
            resource, evidence, lower_bound = GENERATOR, _evidence(GENERATOR, broke), True
        else:
            evidence = f"{broke.why}; no resource indicator fired"
    if first_bad is None:
        verdict = f"no step broke: the knee is above {steps[-1].target:g}/s"
        if steps[-1].saturated:
            verdict += f" ({saturation(steps[-1])} at {steps[-1].target:,g}/s)"
    elif knee is None:
        verdict = f"the first step ({steps[0].target:g}/s) already broke: {steps[0].why}"
    else:
        broke = steps[first_bad]
        verdict = f"knee {knee:g}/s; {broke.target:g}/s broke ({broke.why})"
    if first_bad is not None and steps[first_bad].saturated:
        broke = steps[first_bad]
        said = f"{saturation(broke)} at {broke.target:,g}/s"
        if lower_bound:  # e.g. "load generator saturated (...) at 4,000/s: the knee is a ..."
            bound = "the knee is a lower bound" if knee is not None else "no knee measured"
            verdict = f"{said}: {bound}; {verdict}"
        else:
            verdict += f" ({said} too)"
    return SweepResult(
        name, step_duration, steps, knee, resource, evidence, verdict, skipped,
        lower_bound=lower_bound,
    )  # fmt: skip


# --- output -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _passed(results: list[dict[str, Any]]) -> str:
    return f"{sum(bool(e['passed']) for e in results)}/{len(results)}" if results else "-"


def _classes(step: Step) -> Text:
    ordered = sorted(step.classes.items(), key=lambda kv: -kv[1])
    return Text(", ".join(f"{k} {v}" for k, v in ordered) or "-")


# (header, cell, shown): the indicator columns appear only when some step measured them
_COLUMNS: list[tuple[str, Any, Any]] = [
    ("target/s", lambda s: f"{s.target:g}", None),
    ("achieved/s", lambda s: f"{s.achieved:,.0f}", None),
    ("failures", lambda s: str(s.failures), None),
    ("classes", _classes, None),
    ("p99", lambda s: _ms(s.p99_us), None),
    ("ports", lambda s: _pct(s.ports) + (f" {s.ports_role}" if s.ports_role and s.ports else ""),
     lambda s: s.ports is not None),
    ("TW ovf", lambda s: str(s.tw_overflow), lambda s: s.tw_overflow),
    ("conntrack", lambda s: _pct(s.conntrack), lambda s: s.conntrack is not None),
    ("proxy cpu", lambda s: _pct(s.proxy_cpu), lambda s: s.proxy_cpu is not None),
    ("origin cpu", lambda s: _pct(s.origin_cpu), lambda s: s.origin_cpu is not None),
    ("load cpu", lambda s: Text(_pct(s.generator_cpu), "bold yellow" if s.saturated else ""),
     lambda s: s.generator_cpu is not None),
    ("host idle", lambda s: _pct(s.host_idle), lambda s: s.host_idle is not None),
    ("signature", lambda s: _passed(s.signature), lambda s: s.signature),
    ("", lambda s: Text("PASS", "bold green") if s.passed else Text("FAIL", "bold red"), None),
]  # fmt: skip


def print_sweep(console: Console, result: SweepResult) -> None:
    columns = [
        (header, cell)
        for header, cell, shown in _COLUMNS
        if shown is None or any(shown(step) for step in result.steps)
    ]
    table = Table(*(header for header, _ in columns), box=None, pad_edge=False, padding=(0, 1))
    for step in result.steps:
        table.add_row(*(cell(step) for _, cell in columns))
    console.print(table)
    if result.steps and result.steps[0].signature:
        console.print(
            "signature: the scenario's `expect:` (when: end) held in n/m per step; "
            "reported, not deciding (a sweep's criteria are in `sweep:`)"
        )
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
    style = "bold green" if result.knee is not None and not result.lower_bound else "bold yellow"
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
    files = RunFiles(run_path)
    files.sweep.write_text(json.dumps(result.as_dict(), indent=2))
    summary_path = files.summary
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["sweep"] = {
        "knee": result.knee,
        "lower_bound": result.lower_bound,
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
    rates: list[float] | None  # None: the scenario's sweep.rates
    step_duration: float | None  # None: the scenario's sweep.step_duration, else 20 s
    extra_steps: int | None = 1  # steps run after the first that broke; None: all steps
    max_p99: float | None = None  # seconds; None: the scenario's sweep.max_p99


DEFAULT_STEP_DURATION = 20.0


def plan(options: SweepOptions, base: Scenario) -> tuple[list[float], float]:
    """The rates and step duration: the command line's, else the scenario's ``sweep:``."""
    sweep = base.sweep
    rates = options.rates or (list(sweep.rates) if sweep else [])
    if not rates:
        raise ChaosError(
            f"a sweep needs its rates: scenario {base.name!r} has no sweep.rates",
            "give --rates 500,1000,2000, or all of --from, --to and --step",
        )
    step = options.step_duration
    if step is None:
        step = sweep.step_duration if sweep and sweep.step_duration else DEFAULT_STEP_DURATION
    return rates, step


def run_sweep(options: SweepOptions, console: Console) -> int:
    """Build the lab once, ramp through the rates, judge each step. Exit 0 when a knee was
    found, 10 when none was (the first step broke, or no step did)."""
    base = resolve(options.run)
    rates, step_duration = plan(options, base)
    swept = sweep_scenario(base, rates, step_duration)
    max_p99_us = None if options.max_p99 is None else round(options.max_p99 * 1e6)
    console.print(
        f"sweep [bold]{base.name}[/]: {len(rates)} steps of "
        f"{step_duration:g}s, {', '.join(f'{r:g}' for r in rates)} conn/s"
    )

    stop = (
        None
        if options.extra_steps is None
        else EarlyStop(rates, step_duration, options.extra_steps)
    )

    def judge(run_path: Path, code: int) -> int:
        result = analyse(run_path, base, rates, step_duration, stop, max_p99_us)
        record(run_path, result)
        if options.run.report:  # again, now with the sweep's steps in it
            write_report(run_path)
        print_sweep(console, result)
        console.print(f"sweep results: {run_path / 'sweep.json'}")
        return 0 if result.knee is not None else ExpectationFailed.exit_code

    return run_scenario(options.run, console, scenario=swept, on_done=judge, stop_early=stop)
