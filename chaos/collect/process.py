"""CPU and memory of the processes the lab started (the proxy, the origin), from ``/proc``.

A capacity sweep must tell "the proxy ran out of CPU" from "the ports ran out", so the
proxy's own CPU is measured, not guessed from the host's load. One :class:`ProcessCpu` per
role: the role's process and its children (the origin forks workers), read from
``/proc/PID/stat`` (utime + stime, clock ticks) every tick. Reading a few small files costs
microseconds; no namespace is entered (``/proc`` is the host's).
"""

from __future__ import annotations

import os
from pathlib import Path

from chaos.record.point import Sample, time_ns_of

MEASUREMENT = "process"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[float, int, int, int] | None:
    """(cpu seconds, threads, rss bytes, parent pid) of one process, or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    rest = text[text.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / _TICKS, int(rest[17]), int(rest[21]) * _PAGE, int(rest[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


class ProcessCpu:
    """``process`` points for one process tree (the pid and its children, one level).

    Fields: ``cpu_s`` (cumulative CPU seconds of the tree), ``cpu_pct`` (percent of one core
    since the previous sample), ``threads`` (threads of the tree), ``busy`` (``cpu_pct`` over
    100 × the cores it could use: min(threads, CPUs) — 1.0 is saturated), ``rss_bytes``.
    """

    name = "process"
    period = 0.0

    def __init__(self, pid: int, *, netns: str, tags: dict[str, str] | None = None) -> None:
        self.pid = pid
        self.netns = netns
        self.tags = dict(tags or {})
        self._cpus = max(1, len(os.sched_getaffinity(0)))
        self._last: tuple[float, float] | None = None  # (wall, cpu_s)

    def sample(self, now: float) -> list[Sample]:
        root = _stat(self.pid)
        if root is None:
            return []
        cpu, threads, rss = root[0], root[1], root[2]
        for child in _children(self.pid):
            stat = _stat(child)
            if stat is not None:
                cpu, threads, rss = cpu + stat[0], threads + stat[1], rss + stat[2]
        fields: dict[str, int | float | bool | str] = {
            "cpu_s": round(cpu, 3),
            "threads": threads,
            "rss_bytes": rss,
        }
        if self._last is not None and now > self._last[0]:
            pct = 100.0 * (cpu - self._last[1]) / (now - self._last[0])
            fields["cpu_pct"] = round(pct, 2)
            fields["busy"] = round(pct / (100.0 * min(threads, self._cpus)), 4)
        self._last = (now, cpu)
        tags = {**self.tags, "netns": self.netns, "pid": str(self.pid)}
        return [Sample(MEASUREMENT, tags, fields, time_ns_of(now))]

    def close(self) -> None:
        pass
