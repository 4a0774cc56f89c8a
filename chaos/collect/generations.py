"""What a proxy reload did: old workers still draining, for how long, and their sockets.

HAProxy (master-worker) and nginx reload by starting new workers under the same master while
the old ones finish their connections and exit. One :class:`ProxyGenerations` watches the
master's children every tick and sorts them into generations: workers that appear while
others are already running are a new generation, and every worker of an older generation
still alive is *draining*. A restart (a new master) starts a new generation too.

Measurement ``proxy_generations`` (role ``proxy``), fields:

``workers``        workers of the newest generation
``old_workers``    workers of older generations still alive (draining)
``generations``    generations seen since sampling began, minus one: reloads and restarts
``draining_s``     seconds since the oldest draining generation was superseded (0: none)
``last_drain_s``   how long the last finished drain took, from the start of the workers that
                   superseded it to the first tick without its workers: an upper bound,
                   one sampling interval coarse (``faults`` journal the reload itself)
``old_sockets``    TCP sockets the draining workers still hold, and ``old_<state>`` of them
                   by state (``old_established``, ``old_close_wait``, ...), from sock_diag in
                   the proxy's namespace matched by socket inode to the workers' descriptors

Caddy reloads inside its one process: it shows no workers and no generations.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.kernel.processes import socket_inodes, start_time
from chaos.kernel.proctree import children
from chaos.record import schema
from chaos.record.point import Sample, time_ns_of

MEASUREMENT = schema.PROXY_GENERATIONS
_LIVE_STATES = sd.ALL_STATES - {sd.TIME_WAIT, sd.LISTEN}  # TIME_WAIT has no owner


_TICKS = os.sysconf("SC_CLK_TCK")


def started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (clock-tick resolution: its start
    is counted from boot, and so is /proc/uptime)."""
    ticks = start_time(pid)
    if ticks is None:
        return None
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - ticks / _TICKS)


class ProxyGenerations:
    """``proxy_generations`` points for the proxy whose main pid ``main_pid()`` returns
    (asked every tick: a restart changes it)."""

    name = MEASUREMENT
    period = 0.0

    def __init__(
        self, ns: NetnsRef, main_pid: Callable[[], int | None], tags: dict[str, str]
    ) -> None:
        self.ns = ns
        self.netns = ns.label
        self.main_pid = main_pid
        self.tags = {**tags, "netns": ns.label}
        self._diag: sd.InetDiag | None = None
        self._main: int | None = None
        self._generation: dict[int, int] = {}  # worker pid -> its generation
        self._superseded: dict[int, float] = {}  # generation -> when a newer one appeared
        self._newest = 0
        self._last_drain: float | None = None

    def _track(self, main: int, now: float) -> None:
        if self._main is not None and main != self._main:  # restarted: a new master
            self._next_generation(started_at(main) or now)
        self._main = main
        kids = set(children(main))
        known = set(self._generation)
        for pid in known - kids:
            del self._generation[pid]
        fresh = kids - known
        if fresh and known and main == self._main:
            # new workers while others run, or in place of all of them between two ticks:
            # a reload (its time is when the new workers started)
            self._next_generation(min(started_at(pid) or now for pid in fresh))
        for pid in fresh:
            self._generation[pid] = self._newest
        for generation, since in list(self._superseded.items()):
            if generation not in self._generation.values():
                self._last_drain = max(0.0, now - since)
                del self._superseded[generation]

    def _next_generation(self, when: float) -> None:
        self._superseded[self._newest] = when
        self._newest += 1

    def _old_socket_states(self, old: list[int]) -> Counter[str]:
        inodes = set().union(*(socket_inodes(pid) for pid in old))
        states: Counter[str] = Counter()
        if not inodes:
            return states
        if self._diag is None:
            self._diag = sd.InetDiag.open_in(self.ns)
        for record in self._diag.dump_records(sd.AF_ANY, sd.states_mask(_LIVE_STATES)):
            inode = sd.U32.unpack_from(record, sd.OFF_INODE)[0]
            if inode in inodes:
                states[sd.STATE_NAMES.get(record[sd.OFF_STATE], "other")] += 1
        return states

    def sample(self, now: float) -> list[Sample]:
        main = self.main_pid()
        if main is None:
            return []
        self._track(main, now)
        old = [pid for pid, gen in self._generation.items() if gen < self._newest]
        fields: dict[str, int | float | bool | str] = {
            "workers": len(self._generation) - len(old),
            "old_workers": len(old),
            "generations": self._newest,
            "draining_s": round(max(0.0, now - min(self._superseded.values())), 3)
            if self._superseded
            else 0.0,
        }
        if self._last_drain is not None:
            fields["last_drain_s"] = round(self._last_drain, 3)
        states = self._old_socket_states(old) if old else Counter()
        fields["old_sockets"] = sum(states.values())
        fields.update({f"old_{state}": count for state, count in states.items()})
        return [Sample(MEASUREMENT, dict(self.tags), fields, time_ns_of(now))]

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None
