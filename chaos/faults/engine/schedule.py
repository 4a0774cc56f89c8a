"""Run a scenario's faults on a schedule, in a thread beside the load; always reverted.

One call for the runner::

    schedule = FaultSchedule(scenario.faults, lab_state, journal, annotate=sink.annotate)
    schedule.validate()          # before anything starts: every problem at once
    schedule.start(t0)           # t0 on time.monotonic(), e.g. when the load started
    ...                          # the load runs; schedule.error is set if a fault failed
    schedule.stop()              # stops scheduling and reverts everything (LIFO)

Timing, in seconds after ``t0`` (all on ``time.monotonic``):

- a fault is applied at ``at`` and reverted ``for`` later; without ``for`` it stays until
  ``stop()``;
- with ``every``, the window repeats at ``at + k * every`` (k = 0, 1, ...) until ``stop()``;
  ``for`` is then required and must not exceed ``every`` (a fault never overlaps itself);
- ``kill`` cannot be reverted, so it takes no ``for``; with ``every`` it repeats;
- several faults run in parallel: each has its own timeline, one thread serves them all
  in time order.

Ramps: ``params.ramp`` is a list of parameter overrides, one per step. The window (``for``,
required) is cut into as many equal steps; step *i* runs with ``{**params, **ramp[i]}``,
after step *i-1* was reverted (break before make, so each step's snapshot is the original
state)::

    - type: nft-loss
      target: proxy
      at: 5s
      for: 30s
      params: {direction: [input], probability: 10, ramp: [{}, {probability: 20},
               {probability: 40}]}

Every apply and revert goes through :class:`~chaos.faults.engine.guard.FaultGuard`: ledger entry
first, journal events ``fault.apply`` / ``fault.revert`` (with ``spec``, ``step``,
``window`` and ``at``), and the optional ``annotate`` callback for the sink. A fault that
fails to apply stops the schedule; ``error`` holds it and ``stop()`` raises it after
reverting everything.

A target ``http://HOST:PORT/TARGET`` resolves to a target on a remote agent
(:mod:`~chaos.faults.engine.targets`, :mod:`chaos.agent.client`): the agent validates it
before the run, applies and reverts it, and holds it under a lease this process renews
(``params.lease``, ``params.token_env``). A lease that lapses (the agent reverted the fault
early) stops the schedule like a failed apply.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from chaos import capabilities
from chaos.errors import ChaosError, FaultError
from chaos.faults.base import Fault, Handle, Params, RemoteTarget, Target
from chaos.faults.engine.guard import Annotate, EventLog, FaultGuard
from chaos.faults.engine.ledger import Ledger
from chaos.faults.engine.targets import local_fault_type, resolve, validate_fault
from chaos.faults.registry import fault_type
from chaos.lab.topology import LabState
from chaos.scenario.model import FaultSpec

RAMP_KEY = "ramp"


@dataclass
class _Timeline:
    """One fault spec: its validated steps and where it stands."""

    index: int
    spec: FaultSpec
    steps: list[Fault]
    active: Handle | None = None

    @property
    def reversible(self) -> bool:
        return type(self.steps[0]).reversible

    def actions(self) -> Iterator[tuple[float, str, int, int]]:
        """(offset from t0, "apply"/"revert", step, window), in time order, maybe endless."""
        spec, count = self.spec, len(self.steps)
        window = 0
        while True:
            start = spec.at + window * (spec.every or 0.0)
            for step in range(count):
                offset = (spec.duration or 0.0) * step / count
                yield start + offset, "apply", step, window
            if spec.duration is not None and self.reversible:
                yield start + spec.duration, "revert", -1, window
            if spec.every is None:
                return
            window += 1


def _step_params(spec: FaultSpec) -> list[dict[str, Any]]:
    base = {k: v for k, v in spec.params.items() if k != RAMP_KEY}
    ramp = spec.params.get(RAMP_KEY)
    if ramp is None:
        return [base]
    if not isinstance(ramp, list) or not ramp or not all(isinstance(s, dict) for s in ramp):
        raise FaultError("params.ramp must be a non-empty list of parameter mappings")
    return [{**base, **step} for step in ramp]


def parsed_steps(spec: FaultSpec, where: str = "") -> tuple[Params, ...] | None:
    """The params of each ramp step, parsed by the fault type once per spec: the first call
    (the loader's offline check, else :meth:`FaultSchedule.validate`) keeps them on the spec,
    later ones read them back. None for a fault on an agent, which parses its own."""
    cls = local_fault_type(spec.type, spec.target)
    if cls is None:
        return None
    if spec.parsed is None:
        spec.keep_parsed(tuple(cls.parse_params(p, where) for p in _step_params(spec)))
    return typing.cast("tuple[Params, ...]", spec.parsed)


def _windows(spec: FaultSpec, duration: float) -> list[tuple[float, float]]:
    """Where ``spec`` is applied within a run of ``duration`` seconds."""
    length = spec.duration if spec.duration is not None else duration
    if spec.every is None:
        return [(spec.at, min(spec.at + length, duration))]
    starts = []
    start = spec.at
    while start < duration and len(starts) < 10_000:
        starts.append(start)
        start += spec.every
    return [(s, min(s + length, duration)) for s in starts]


def overlap_warnings(faults: Sequence[FaultSpec], duration: float) -> list[str]:
    """Faults that stack (sysctl windows on one key, stops of one target) and overlap in
    time: allowed (the last one out restores the original), but worth a warning."""
    found: list[str] = []
    stacking = []
    for index, spec in enumerate(faults):
        try:
            cls, steps = local_fault_type(spec.type, spec.target), parsed_steps(spec)
        except FaultError:
            continue
        if cls is None or steps is None:
            continue
        keys = set().union(*(cls.overlap_keys(p) for p in steps))
        if cls.stacks and keys:
            stacking.append((index, spec, keys, _windows(spec, duration)))
    for (i, a, keys_a, win_a), (j, b, keys_b, win_b) in itertools.combinations(stacking, 2):
        shared = keys_a & keys_b
        if a.type != b.type or a.target.strip() != b.target.strip() or not shared:
            continue
        spans = [(max(s, t), min(e, u)) for s, e in win_a for t, u in win_b]
        spans = [(s, e) for s, e in spans if s < e]
        if spans:
            first = min(spans)
            found.append(
                f"faults[{i}] and faults[{j}] ({a.type} on {a.target}: "
                f"{', '.join(sorted(shared))}) overlap from {first[0]:g}s to {first[1]:g}s: "
                "they stack (the newest holds; the original comes back when both ended)"
            )
    return found


def check_offline(spec: FaultSpec) -> None:
    """What a fault spec shows without a lab (``chaos validate``): a known type, valid params
    for every ramp step (kept on the spec: :func:`parsed_steps`), and sound timing. Targets
    are checked when the lab exists; a fault on an agent is checked by the agent before the
    run."""
    steps = parsed_steps(spec)
    if steps is None:
        return
    _check_timing(spec, fault_type(spec.type).reversible, len(steps))


def _check_timing(spec: FaultSpec, reversible: bool, steps: int) -> None:
    if spec.at < 0:
        raise FaultError("`at` must be >= 0")
    if spec.duration is not None and spec.duration <= 0:
        raise FaultError("`for` must be > 0")
    if spec.every is not None and spec.every <= 0:
        raise FaultError("`every` must be > 0")
    if not reversible:
        if spec.duration is not None or steps > 1:
            raise FaultError(f"{spec.type} cannot be reverted: remove `for` and `ramp`")
        return
    if spec.every is not None:
        if spec.duration is None:
            raise FaultError("`every` needs `for` (how long each repetition lasts)")
        if spec.duration > spec.every:
            raise FaultError("`for` must not exceed `every`: a fault never overlaps itself")
    if steps > 1 and spec.duration is None:
        raise FaultError("a ramp needs `for`: the window is cut into equal steps")


class FaultSchedule:
    def __init__(
        self,
        specs: Sequence[FaultSpec],
        lab_state: LabState,
        journal: EventLog | None = None,
        annotate: Annotate | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.specs = list(specs)
        self.lab_state = lab_state
        self.guard = FaultGuard(journal, ledger, annotate)
        self.journal = journal
        self._timelines: list[_Timeline] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.error: ChaosError | None = None

    # --- before the run -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every spec (type, target, params of every step, timing) and the kernel
        features they need; raise one FaultError listing every problem. Changes nothing."""
        timelines: list[_Timeline] = []
        problems: list[str] = []
        targets: dict[str, Target | RemoteTarget] = {}
        for index, spec in enumerate(self.specs):
            where = f"faults[{index}] ({spec.type} on {spec.target})"
            try:
                if spec.target not in targets:
                    targets[spec.target] = resolve(spec.target, self.lab_state)
                target = targets[spec.target]
                raw = _step_params(spec)
                parsed = parsed_steps(spec, f" on {spec.target.strip()}") or [None] * len(raw)
                steps = [
                    validate_fault(spec.type, target, r, self._lease_lost, p)
                    for r, p in zip(raw, parsed, strict=True)
                ]
                _check_timing(spec, type(steps[0]).reversible, len(steps))
            except FaultError as exc:
                problems.append(f"{where}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
                continue
            timelines.append(_Timeline(index, spec, steps))
        if problems:
            raise FaultError(
                f"{len(problems)} problem(s) in the faults:\n  " + "\n  ".join(problems),
                "fix the faults named above; `chaos faults types` lists every type and param",
            )
        features = {f for t in timelines for f in type(t.steps[0]).features}
        capabilities.require(features)
        self._timelines = timelines

    # --- during the run -------------------------------------------------------------------
    def start(self, t0: float | None = None) -> None:
        if self._timelines is None:
            self.validate()
        if self._thread is not None:
            raise FaultError("this fault schedule was already started")
        self._t0 = time.monotonic() if t0 is None else t0
        self._thread = threading.Thread(target=self._run, name="fault-schedule", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._timelines is not None
        queue: list[tuple[float, int, int, str, int, int, Iterator[Any]]] = []
        seq = 0

        def push(timeline: _Timeline, actions: Iterator[tuple[float, str, int, int]]) -> None:
            nonlocal seq
            nxt = next(actions, None)
            if nxt is not None:
                offset, action, step, window = nxt
                # seq breaks ties: reverts and applies due at once run in spec order.
                heapq.heappush(queue, (offset, seq, timeline.index, action, step, window, actions))
                seq += 1

        by_index = {t.index: t for t in self._timelines}
        for timeline in self._timelines:
            push(timeline, timeline.actions())
        while queue:
            offset, _seq, index, action, step, window, actions = queue[0]
            if self._stop.wait(max(0.0, self._t0 + offset - time.monotonic())):
                return
            heapq.heappop(queue)
            timeline = by_index[index]
            try:
                self._act(timeline, action, step, window, offset)
            except Exception as exc:
                wrapped = FaultError(f"fault schedule: {type(exc).__name__}: {exc}")
                self.error = exc if isinstance(exc, ChaosError) else wrapped
                self._event("fault.schedule.failed", spec=index, error=str(exc))
                return
            push(timeline, actions)

    def _act(self, timeline: _Timeline, action: str, step: int, window: int, at: float) -> None:
        if timeline.active is not None:
            # A window's end, or the next ramp step: break before make.
            self.guard.revert(timeline.active)
            timeline.active = None
        if action == "apply":
            handle = self.guard.apply(
                timeline.steps[step], spec=timeline.index, step=step, window=window, at=at
            )
            if timeline.reversible:
                timeline.active = handle

    def stop(self) -> None:
        """Stop scheduling and revert everything applied (LIFO); safe to call twice.

        Raises the FaultError of a failed revert (ledger entries kept), else the error that
        stopped the schedule, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for timeline in self._timelines or []:
            timeline.active = None
        self.guard.revert_all()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _lease_lost(self, message: str) -> None:
        """A remote fault's lease could not be renewed: the agent reverted it early, so the
        run no longer has the fault it asked for. Stop the schedule, as a failed apply does."""
        self._event("fault.lease.lost", error=message)
        if self.error is None:
            self.error = FaultError(
                message,
                "check the network between the controller and the agent, or raise params.lease",
            )
        self._stop.set()

    @property
    def active(self) -> list[Handle]:
        return self.guard.active

    def _event(self, name: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.event(name, **fields)
