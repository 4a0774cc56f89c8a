"""Signals to the lab's processes: ``stop`` (SIGSTOP for the window, SIGCONT at revert) and
``kill`` (SIGKILL; irreversible).

The processes are the target's (see :mod:`chaos.faults.engine.targets`): a role's recorded
processes, ``workers``, ``ROLE:PATTERN`` (command lines matched when the fault is prepared)
or ``pid:N``. With ``children`` (the default), their descendants are signalled too: the
origin and nginx serve from forked workers, and stopping only the parent would stop nothing.

Every process is recorded in the handle as (pid, start time, state before). A pid whose start
time no longer matches belongs to another program now and is never signalled. After each
signal the state is checked in ``/proc``: ``T`` after SIGSTOP, not ``T`` after SIGCONT, gone
(or a zombie) after SIGKILL; a process that does not get there in ``settle`` seconds is a
FaultError. Revert continues only processes that were not already stopped before the fault.

Stops are reference-counted per process (pid and start time), across processes through the
ledger: a stop that ends while another still holds the process leaves it stopped, and a
stop that began on a process another had stopped inherits the state from before the first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chaos.errors import FaultError
from chaos.faults.base import Fault, Handle, HandleData, Params
from chaos.kernel import netns
from chaos.kernel.processes import CommandPattern, cmdline, start_time, state_of

GONE = (None, "Z")


class SignalParams(Params):
    children: bool = Field(default=True, description="also signal the processes' descendants")
    settle: float = Field(
        default=2.0, gt=0, le=30, description="seconds to wait for the process state to change"
    )


def _parents() -> dict[int, int]:
    """pid → parent pid, for every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    out[int(entry)] = int(fh.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def _with_descendants(pids: list[int]) -> list[int]:
    parents = _parents()
    found = list(dict.fromkeys(pids))
    index = 0
    while index < len(found):  # breadth first: parents before their children
        found += [p for p, pp in parents.items() if pp == found[index] and p not in found]
        index += 1
    return found


def _wait_state(pid: int, started: int | None, done: Any, settle: float) -> str | None:
    """Poll /proc until ``done(state)``; returns the last state seen."""
    deadline = time.monotonic() + settle
    while True:
        state = state_of(pid) if start_time(pid) == started else None
        if done(state) or time.monotonic() >= deadline:
            return state
        time.sleep(0.002)


class ProcessRecord(BaseModel):
    """One process a signal fault acts on: its start time tells it from a later process
    with the same pid; ``state`` is the one it had before the fault (T: already stopped)."""

    model_config = ConfigDict(extra="ignore")

    pid: int
    started: int | None
    state: str | None

    def same_process(self, other: ProcessRecord) -> bool:
        return (self.pid, self.started) == (other.pid, other.started)


class SignalHandle(HandleData):
    processes: list[ProcessRecord]
    settle: float


class _SignalFault(Fault):
    handle_model = SignalHandle
    params: SignalParams

    def check_target(self) -> None:
        if self.target.netns is None and not self.target.pids:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: refusing to signal host processes",
                "aim it at a lab role, `workers`, ROLE:PATTERN or pid:N",
            )
        if not self.target.pids and self.target.pattern is None:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: the lab recorded no process there",
                "aim it at proxy, origin, workers, ROLE:PATTERN (e.g. client:locust) or pid:N",
            )
        # the processes there now: an agent's pattern matches a running container's
        self._refuse_init(self._matching() if self.target.pattern else list(self.target.pids))

    def _matching(self) -> list[int]:
        assert self.target.netns is not None and self.target.pattern is not None
        pattern = CommandPattern(self.target.pattern)  # checked when the target resolved
        return [p for p in netns.pids_in(self.target.netns) if pattern.search(cmdline(p))]

    def _refuse_init(self, pids: list[int]) -> None:
        """PID 1 of our PID namespace (a container's main process, when the agent shares its
        namespace; the host's init otherwise): the kernel drops SIGSTOP and SIGKILL sent to
        it from inside, so the fault would do nothing (or, on the host, everything)."""
        if 1 in pids:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: process 1 ({cmdline(1)[:80]!r}) "
                "is the init of its PID namespace, which ignores SIGSTOP and SIGKILL sent "
                "from inside it",
                "run the program under an init (compose: `init: true`, docker run --init) "
                "and aim at the program, not the init: anchor ROLE:PATTERN, e.g. "
                "'origin:^\\S*python3? -m chaos[.]lab[.]origin'",
            )

    def _select(self) -> list[int]:
        if self.target.pattern is not None:
            pids = self._matching()
        else:
            pids = [p for p in self.target.pids if state_of(p) not in GONE]
        self._refuse_init(pids)
        if self.params.children:
            pids = _with_descendants(pids)
        return [p for p in pids if p != os.getpid() and state_of(p) not in GONE]

    def prepare(self) -> Handle:
        pids = self._select()
        if not pids:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: no live process matches",
                "check `chaos lab status`; workers exist only while the load runs",
            )
        records = [ProcessRecord(pid=p, started=start_time(p), state=state_of(p)) for p in pids]
        return self.handle(SignalHandle(processes=records, settle=self.params.settle))

    @staticmethod
    def _signal(record: ProcessRecord, sig: signal.Signals) -> bool:
        """Send ``sig`` unless the pid now belongs to another process; False if not sent."""
        if start_time(record.pid) != record.started:
            return False
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            return False
        return True


class Stop(_SignalFault):
    kind = "stop"
    params_model = SignalParams

    def apply(self, handle: Handle) -> None:
        data = SignalHandle.of(handle)
        for record in data.processes:
            if not self._signal(record, signal.SIGSTOP):
                continue  # exited meanwhile: nothing to stop
            state = _wait_state(record.pid, record.started, _stopped_or_gone, data.settle)
            if state not in (*GONE, "T"):
                raise FaultError(
                    f"process {record.pid} did not stop after SIGSTOP (state {state})",
                    "is it being traced? `cat /proc/PID/status`",
                )

    stacks = True

    @classmethod
    def overlap_keys(cls, params: Params) -> set[str]:
        return {"the processes"}

    def stack_on(self, handle: Handle, holders: list[Handle]) -> None:
        data = SignalHandle.of(handle)
        for record in data.processes:
            older = _holding(record, holders)
            if older:
                record.state = older[0].state  # the state before the first stop
        data.store(handle)

    @classmethod
    def revert(cls, handle: Handle) -> None:
        cls.revert_stacked(handle, [])

    @classmethod
    def revert_stacked(cls, handle: Handle, holders: list[Handle]) -> None:
        data = SignalHandle.of(handle)
        stuck = []
        for record in reversed(data.processes):
            if record.state == "T":
                continue  # it was stopped before the fault: leave it as found
            if _holding(record, holders):
                continue  # another stop still holds it
            if state_of(record.pid) != "T" or not cls._signal(record, signal.SIGCONT):
                continue
            state = _wait_state(record.pid, record.started, _running_or_gone, data.settle)
            if state == "T":
                stuck.append(record.pid)
        if stuck:
            raise FaultError(
                f"processes {stuck} are still stopped after SIGCONT",
                "run `chaos revert-all` to retry, or `kill -CONT PID`",
            )


class Kill(_SignalFault):
    kind = "kill"
    params_model = SignalParams
    reversible = False

    def apply(self, handle: Handle) -> None:
        data = SignalHandle.of(handle)
        alive = []
        for record in data.processes:
            if not self._signal(record, signal.SIGKILL):
                continue
            state = _wait_state(record.pid, record.started, lambda s: s in GONE, data.settle)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record.pid, os.WNOHANG)  # our own child: reap it
            if state not in GONE:
                alive.append(record.pid)
        if alive:
            raise FaultError(f"processes {alive} survived SIGKILL (uninterruptible sleep?)")

    @classmethod
    def revert(cls, handle: Handle) -> None:
        """A killed process cannot be brought back; nothing to do, harmlessly."""


def _holding(record: ProcessRecord, holders: list[Handle]) -> list[ProcessRecord]:
    """The records of ``holders`` (oldest first) for the same process as ``record``."""
    return [
        r for h in holders for r in SignalHandle.of(h).processes if r.same_process(record)
    ]


def _stopped_or_gone(state: str | None) -> bool:
    return state in (*GONE, "T")


def _running_or_gone(state: str | None) -> bool:
    return state != "T"
