"""Processes found from ``/proc`` and the cgroup file system: a cgroup's members, and the
roots of the process trees that carry one name. The lab uses them to find an external
proxy; :mod:`chaos.collect.process` measures what they find.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "cgroup_pids", "children", "process_roots"]

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


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (over all its threads), [] when it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


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
