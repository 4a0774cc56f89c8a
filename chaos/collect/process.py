"""CPU and memory of the processes a run depends on, and of the host, from ``/proc``.

A capacity sweep must tell "the proxy ran out of CPU" from "the ports ran out", and both
from "the load generator (or the whole host) ran out", so each is measured, never guessed:

* :class:`ProcessCpu`: one role's process and its children (the origin forks workers,
  HAProxy's master and nginx's master have workers), or every process of a cgroup (an
  external proxy named by pid, process name or cgroup), read from ``/proc/PID/stat``
  (utime + stime, clock ticks) every tick;
* :class:`LoadGeneratorCpu`: every Locust process (master and workers) of the load
  namespace (the workers start after the sampler);
* :class:`HostCpu`: the host's idle and steal time from ``/proc/stat``.

Reading a few small files costs microseconds; no namespace is entered (``/proc`` is the
host's). CPU of processes that exited between two ticks (an old worker that finished
draining) is lost from ``cpu_s``; ``cpu_pct`` is clamped at 0 rather than going negative then.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from chaos.kernel.proctree import cgroup_pids, children
from chaos.record import schema
from chaos.record.point import FieldValue, Sample, time_ns_of

MEASUREMENT = schema.PROCESS
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


class ProcessCpu:
    """``process`` points for one process tree (the pid and its children, one level), or for
    every process of a cgroup (``cgroup``: then ``pid`` is 0 and only labels the points).

    Fields: ``cpu_s`` (cumulative CPU seconds of the tree), ``cpu_pct`` (percent of one core
    since the previous sample), ``threads`` (threads of the tree), ``busy`` (``cpu_pct`` over
    100 × the cores it could use: min(threads of its workers, or of the tree when it has no
    children, CPUs) — 1.0 is saturated), ``rss_bytes``.
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
        follow: Callable[[], int | None] | None = None,
        cores: int | None = None,
    ) -> None:
        """``follow``: asked for the pid again when ``pid`` is gone (a restarted proxy);
        the CPU of the new process counts from its first sample. ``cores``: the most cores
        the process can use whatever its threads (1 for a Python process bound by its GIL,
        such as a Locust worker); default: its serving threads, up to the CPUs it may use."""
        self.follow = follow
        self.pid = pid
        self.cgroup = cgroup
        self.netns = netns
        self.tags = dict(tags or {})
        self._cpus = max(1, len(os.sched_getaffinity(0)))
        self.cores = cores
        self._last: tuple[float, float] | None = None  # (wall, cpu_s)

    def _pids(self) -> list[int]:
        if self.cgroup is not None:
            return cgroup_pids(self.cgroup)
        if _stat(self.pid) is None and self.follow is not None:
            if (pid := self.follow()) is None or pid == self.pid:
                return []
            self.pid, self._last = pid, None
        return [self.pid, *children(self.pid)] if _stat(self.pid) is not None else []

    def sample(self, now: float) -> list[Sample]:
        stats = [stat for pid in self._pids() if (stat := _stat(pid)) is not None]
        if not stats:
            return []
        cpu = sum(stat[0] for stat in stats)
        threads = sum(stat[1] for stat in stats)
        rss = sum(stat[2] for stat in stats)
        # the cores the tree can use are its workers' when it has any: a master (HAProxy -W,
        # nginx, the origin's parent) sleeps while they serve
        serving = sum(stat[1] for stat in stats[1:]) if self.cgroup is None else threads
        serving = serving or threads
        fields: dict[str, FieldValue] = {
            "cpu_s": round(cpu, 3),
            "threads": threads,
            "rss_bytes": rss,
        }
        if self._last is not None and now > self._last[0]:
            pct = max(0.0, 100.0 * (cpu - self._last[1]) / (now - self._last[0]))
            fields["cpu_pct"] = round(pct, 2)
            usable = self.cores or min(serving, self._cpus)
            fields["busy"] = round(pct / (100.0 * usable), 4)
        self._last = (now, cpu)
        tags = {**self.tags, "netns": self.netns, "pid": str(self.pid)}
        if self.cgroup is not None:
            tags["cgroup"] = self.cgroup
        return [Sample(MEASUREMENT, tags, fields, time_ns_of(now))]

    def close(self) -> None:
        pass


LOCUST_PROCESS = re.compile(rb"locust\b.*\s--(master|worker)(\s|$)")


def _net_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class LoadGeneratorCpu:
    """``process`` points (tag ``process``: ``locust-master`` or ``locust-worker``) for every
    Locust process in the network namespace at ``netns_path``, each bound to one core by
    its GIL: ``busy`` 1.0 is a saturated generator. The workers start after the sampler, so
    processes are looked up by a pass over ``/proc`` (~5 ms on a busy host) every
    ``rescan`` seconds, and at once while none is found."""

    name = "load_cpu"
    period = 0.0
    rescan = 5.0

    def __init__(self, netns_path: str, *, netns: str, tags: dict[str, str] | None = None) -> None:
        self.netns_path = netns_path
        self.netns = netns
        self.tags = dict(tags or {})
        self._tracked: dict[int, ProcessCpu] = {}
        self._scanned = -1e18

    def _find(self) -> dict[int, str]:
        inode = _net_inode(self.netns_path)
        found: dict[int, str] = {}
        if inode is None:
            return found
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or _net_inode(f"/proc/{entry}/ns/net") != inode:
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            match = LOCUST_PROCESS.search(cmdline)
            if match:
                found[int(entry)] = "locust-" + match.group(1).decode()
        return found

    def sample(self, now: float) -> list[Sample]:
        if self._tracked and now - self._scanned < self.rescan:
            return [s for tracker in self._tracked.values() for s in tracker.sample(now)]
        self._scanned = now
        found = self._find()
        self._tracked = {
            pid: self._tracked.get(pid)
            or ProcessCpu(pid, netns=self.netns, tags={**self.tags, "process": kind}, cores=1)
            for pid, kind in found.items()
        }
        return [s for tracker in self._tracked.values() for s in tracker.sample(now)]

    def close(self) -> None:
        pass




class HostCpu:
    """``host_cpu`` points: the host's CPU over the last interval, from the first line of
    ``/proc/stat``. Fields ``idle`` (idle + iowait share of all CPUs, 0..1), ``steal`` (time
    a hypervisor gave to others), ``busy`` (1 - idle - steal) and ``cpus``. A host at
    ``idle`` ≈ 0 measures its own limit, not the system under test's."""

    name = "host_cpu"
    netns = "host"
    period = 0.0

    def __init__(self, tags: dict[str, str] | None = None, stat_path: str = "/proc/stat") -> None:
        self.tags = dict(tags or {})
        self.stat_path = stat_path
        self._last: tuple[int, int, int] | None = None  # (total, idle, steal) jiffies

    def _read(self) -> tuple[int, int, int, int] | None:
        try:
            with open(self.stat_path) as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        # cpu  user nice system idle iowait irq softirq steal guest guest_nice
        values = [int(v) for v in lines[0].split()[1:9]]
        values += [0] * (8 - len(values))
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return sum(values), values[3] + values[4], values[7], cpus

    def sample(self, now: float) -> list[Sample]:
        read = self._read()
        if read is None:
            return []
        total, idle, steal, cpus = read
        last, self._last = self._last, (total, idle, steal)
        if last is None or total <= last[0]:
            return []
        span = total - last[0]
        idle_share = (idle - last[1]) / span
        steal_share = (steal - last[2]) / span
        fields: dict[str, int | float | bool | str] = {
            "idle": round(idle_share, 4),
            "steal": round(steal_share, 4),
            "busy": round(max(0.0, 1.0 - idle_share - steal_share), 4),
            "cpus": cpus,
        }
        return [Sample(schema.HOST_CPU, {**self.tags, "netns": "host"}, fields, time_ns_of(now))]

    def close(self) -> None:
        pass
