"""CPU and memory of the proxy and the origin, from ``/proc``: the processes the lab started,
or an external proxy named by pid, process name or cgroup.

A capacity sweep must tell "the proxy ran out of CPU" from "the ports ran out", so the
proxy's own CPU is measured, not guessed from the host's load. One :class:`ProcessCpu` per
role: the role's process and its children (the origin forks workers, HAProxy's master and
nginx's master have workers), or every process of a cgroup, read from ``/proc/PID/stat``
(utime + stime, clock ticks) every tick. Reading a few small files costs microseconds; no
namespace is entered (``/proc`` is the host's).

CPU of processes that exited between two ticks (an old worker that finished draining) is
lost from ``cpu_s``; ``cpu_pct`` is clamped at 0 rather than going negative then.
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


CGROUP_ROOT = "/sys/fs/cgroup"
#: where a cgroup path is looked for: cgroup v2, then a hybrid host's v2 and v1 hierarchies
_CGROUP_MOUNTS = ("", "unified", "systemd", "pids", "cpu")


def cgroup_pids(cgroup: str) -> list[int]:
    """The processes of a cgroup (``/system.slice/haproxy.service``), [] when gone."""
    for mount in _CGROUP_MOUNTS:
        try:
            text = Path(CGROUP_ROOT, mount, cgroup.lstrip("/"), "cgroup.procs").read_text()
        except OSError:
            continue
        return [int(pid) for pid in text.split()]
    return []


def process_roots(name: str) -> list[int]:
    """Pids of the processes called ``name`` (comm) whose parent is not also called so:
    one per process tree (a master and its workers count once)."""
    comms: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        comms[int(entry)] = (comm, ppid)
    return sorted(
        pid
        for pid, (comm, ppid) in comms.items()
        if comm == name and comms.get(ppid, ("", 0))[0] != name
    )


class ProcessCpu:
    """``process`` points for one process tree (the pid and its children, one level), or for
    every process of a cgroup (``cgroup``: then ``pid`` is 0 and only labels the points).

    Fields: ``cpu_s`` (cumulative CPU seconds of the tree), ``cpu_pct`` (percent of one core
    since the previous sample), ``threads`` (threads of the tree), ``busy`` (``cpu_pct`` over
    100 × the cores it could use: min(threads, CPUs) — 1.0 is saturated), ``rss_bytes``.
    """

    name = "process"
    period = 0.0

    def __init__(
        self,
        pid: int,
        *,
        netns: str,
        tags: dict[str, str] | None = None,
        cgroup: str | None = None,
    ) -> None:
        self.pid = pid
        self.cgroup = cgroup
        self.netns = netns
        self.tags = dict(tags or {})
        self._cpus = max(1, len(os.sched_getaffinity(0)))
        self._last: tuple[float, float] | None = None  # (wall, cpu_s)

    def _pids(self) -> list[int]:
        if self.cgroup is not None:
            return cgroup_pids(self.cgroup)
        return [self.pid, *_children(self.pid)] if _stat(self.pid) is not None else []

    def sample(self, now: float) -> list[Sample]:
        stats = [stat for pid in self._pids() if (stat := _stat(pid)) is not None]
        if not stats:
            return []
        cpu = sum(stat[0] for stat in stats)
        threads = sum(stat[1] for stat in stats)
        rss = sum(stat[2] for stat in stats)
        fields: dict[str, int | float | bool | str] = {
            "cpu_s": round(cpu, 3),
            "threads": threads,
            "rss_bytes": rss,
        }
        if self._last is not None and now > self._last[0]:
            pct = max(0.0, 100.0 * (cpu - self._last[1]) / (now - self._last[0]))
            fields["cpu_pct"] = round(pct, 2)
            fields["busy"] = round(pct / (100.0 * min(threads, self._cpus)), 4)
        self._last = (now, cpu)
        tags = {**self.tags, "netns": self.netns, "pid": str(self.pid)}
        if self.cgroup is not None:
            tags["cgroup"] = self.cgroup
        return [Sample(MEASUREMENT, tags, fields, time_ns_of(now))]

    def close(self) -> None:
        pass
