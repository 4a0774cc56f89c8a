"""Kernel TCP counters per namespace: /proc/net/netstat, /proc/net/snmp and sockstat.

The files are opened through ``/proc/thread-self/net`` from a thread inside the namespace
(``/proc/net`` follows the *process's* main thread, not the calling thread) and then
re-read with ``pread`` from the sampler thread.

Counters (``TcpExt``, ``Tcp``) are reported as increases since the previous sample; the
first sample reports the increase since the collector was built. ``Tcp`` gauges (CurrEstab,
MaxConn and the RTO settings) are reported as they are.
"""

from __future__ import annotations

import time

from chaos.collect.base import deltas
from chaos.kernel.nsref import NetnsRef, ProcFile, open_proc_files
from chaos.record import schema
from chaos.record.point import Sample, time_ns_of

PROC_NET = "/proc/thread-self/net"

# Tcp fields of /proc/net/snmp that are not counters
TCP_GAUGES = frozenset({"RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn", "CurrEstab"})

# the counters the design calls out; always present in `tcp_counters` when the kernel has them
NOTABLE = (
    "TcpExt.TCPTimeWaitOverflow",
    "TcpExt.TWRecycled",
    "TcpExt.TCPAbortOnTimeout",
    "TcpExt.TCPAbortOnClose",
    "TcpExt.TCPACKSkippedTimeWait",
    "TcpExt.TCPACKSkippedFinWait2",
    "TcpExt.TCPChallengeACK",
    "TcpExt.TCPSynRetrans",
    "TcpExt.ListenOverflows",
    "Tcp.OutRsts",
    "Tcp.EstabResets",
)


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/netstat or /proc/net/snmp: pairs of "Group: names" / "Group: values".

    >>> parse_netstat("Tcp: A B\\nTcp: 1 -1\\n")
    {'Tcp': {'A': 1, 'B': -1}}
    """
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        group, _, names = names_line.partition(":")
        vgroup, _, values = values_line.partition(":")
        if group != vgroup:
            continue  # malformed pair: skip rather than mis-assign
        keys = names.split()
        vals = values.split()
        if len(keys) != len(vals):
            continue
        try:
            out.setdefault(group.strip(), {}).update(zip(keys, (int(v) for v in vals), strict=True))
        except ValueError:
            continue
    return out


def parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/sockstat{,6}: "TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 0".

    >>> parse_sockstat("sockets: used 3\\nTCP: inuse 1 tw 2\\n")
    {'sockets': {'used': 3}, 'TCP': {'inuse': 1, 'tw': 2}}
    """
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        words = rest.split()
        values: dict[str, int] = {}
        for key, value in zip(words[::2], words[1::2], strict=False):
            try:
                values[key] = int(value)
            except ValueError:
                continue
        if proto and values:
            out[proto.strip()] = values
    return out


def flatten(groups: dict[str, dict[str, int]], wanted: tuple[str, ...]) -> dict[str, int]:
    """``{"TcpExt.TW": 3, ...}`` for the wanted groups."""
    out = {}
    for group in wanted:
        for key, value in groups.get(group, {}).items():
            out[f"{group}.{key}"] = value
    return out


class KernelCounters:
    """``tcp_counters`` (TcpExt and Tcp increases) and ``sockstat`` for one namespace."""

    name = "kernel"

    def __init__(
        self,
        ns: NetnsRef,
        *,
        groups: tuple[str, ...] = ("TcpExt", "Tcp"),
        period: float = 0.0,
        cumulative: bool = False,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.ns = ns
        self.cumulative = cumulative  # report totals since boot instead of increases
        self.netns = ns.label
        self.period = period
        self.groups = groups
        self.tags = {"netns": ns.label, **(tags or {})}
        self._files: dict[str, ProcFile] = ns.run(
            open_proc_files,
            {
                "netstat": f"{PROC_NET}/netstat",
                "snmp": f"{PROC_NET}/snmp",
                "sockstat": f"{PROC_NET}/sockstat",
                "sockstat6": f"{PROC_NET}/sockstat6",
            },
        )
        self._previous = self.totals()
        self._previous_t = time.monotonic()

    def totals(self) -> dict[str, int]:
        """Current cumulative counters, keyed ``Group.Name``."""
        merged: dict[str, dict[str, int]] = {}
        for key in ("netstat", "snmp"):
            handle = self._files.get(key)
            if handle is not None:
                merged.update(parse_netstat(handle.read_text()))
        return flatten(merged, self.groups)

    def sockstat(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in ("sockstat", "sockstat6"):
            handle = self._files.get(key)
            if handle is None:
                continue
            for proto, values in parse_sockstat(handle.read_text()).items():
                for name, value in values.items():
                    out[f"{proto.lower()}_{name}"] = value
        if "tcp_mem" in out:  # pages, like the file; renamed so the unit is in the name
            out["tcp_mem_pages"] = out.pop("tcp_mem")
        return out

    def sample(self, now: float) -> list[Sample]:
        totals = self.totals()
        mono = time.monotonic()
        interval = mono - self._previous_t
        moved = deltas(totals, self._previous)
        self._previous, self._previous_t = totals, mono
        stamp = time_ns_of(now)
        samples = []
        for group in self.groups:
            prefix = group + "."
            fields: dict[str, int | float] = {}
            for key, value in totals.items():
                if not key.startswith(prefix):
                    continue
                name = key[len(prefix) :]
                if (group == "Tcp" and name in TCP_GAUGES) or self.cumulative:
                    fields[name] = value
                elif key in moved:
                    fields[name] = moved[key]
            if fields:
                if not self.cumulative:
                    fields["interval_s"] = round(interval, 6)
                tags = {**self.tags, "group": group}
                samples.append(Sample(schema.TCP_COUNTERS, tags, fields, stamp))
        stat = self.sockstat()
        if stat:
            samples.append(Sample(schema.SOCKSTAT, dict(self.tags), dict(stat), stamp))
        return samples

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files = {}
