"""Every measurement a run writes, with its fields and tags: the names that cross stages.

Collectors and the load series write these points (``samples.lp``, InfluxDB); the report,
expectations, the sweep, live progress, ``chaos compare`` and the Grafana dashboard read them.
A reader names a measurement through the constants below, and a unit test holds every name a
reader or the dashboard uses to this list. ``docs/metrics.md`` explains each field.

Fields named after something outside the project (the kernel's ``/proc/net/netstat``
counters, conntrack's statistics columns, Locust's percentiles, a load phase) are matched by
a pattern rather than listed one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CHAOS_EVENT",
    "COLLECTOR_COST",
    "CONNTRACK",
    "CONTROLLER",
    "FAMILY_ALL",
    "HOST_CPU",
    "LAB_ESCAPES",
    "LAB_FORWARDED_TO_CLIENTS",
    "LAB_FORWARDED_TO_ORIGIN",
    "LAB_RESETS",
    "LOAD",
    "LOAD_FAILURES",
    "MEASUREMENTS",
    "PORT_BUDGET",
    "PORT_BUDGET_SUMMARY",
    "PROCESS",
    "PROXY_ERRORS",
    "PROXY_GENERATIONS",
    "SOCKSTAT",
    "TCP_COUNTERS",
    "TCP_STATES",
    "TCP_TEARDOWN",
    "TCP_ZOMBIES",
    "TCP_ZOMBIES_PEER",
    "TIME_WAIT_TIMERS",
    "Measurement",
    "is_family_total",
    "measurement",
]

TCP_STATES = "tcp_states"
TCP_TEARDOWN = "tcp_teardown"
PORT_BUDGET = "port_budget"
PORT_BUDGET_SUMMARY = "port_budget_summary"
TCP_ZOMBIES = "tcp_zombies"
TCP_ZOMBIES_PEER = "tcp_zombies_peer"
TCP_COUNTERS = "tcp_counters"
SOCKSTAT = "sockstat"
CONNTRACK = "conntrack"
COLLECTOR_COST = "collector_cost"
CONTROLLER = "controller"
PROCESS = "process"
HOST_CPU = "host_cpu"
PROXY_GENERATIONS = "proxy_generations"
LAB_ESCAPES = "lab_escapes"
LAB_RESETS = "lab_resets"
LAB_FORWARDED_TO_ORIGIN = "lab_forwarded_to_origin"
LAB_FORWARDED_TO_CLIENTS = "lab_forwarded_to_clients"
TIME_WAIT_TIMERS = "time_wait_timers"
PROXY_ERRORS = "proxy_errors"
CHAOS_EVENT = "chaos_event"
#: the per-second load series (one point a second of load; see docs/metrics.md)
LOAD = "load"
#: failures of the load series by class, one point per (second, class)
LOAD_FAILURES = "load_failures"

#: ``tcp_states``' ``family`` tag on the point that totals both address families
FAMILY_ALL = "all"


def is_family_total(tags: Mapping[str, str]) -> bool:
    """The rule for ``tcp_states``: the ``family=all`` point holds the totals (a point
    without the tag, from a writer older than the split, is one too)."""
    return tags.get("family", FAMILY_ALL) == FAMILY_ALL


#: the sock_diag states, by the names the census writes them under
SOCKET_STATES = (
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
)
#: enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h), as conntrack writes it
CONNTRACK_TCP_STATES = (
    "none", "syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
    "time_wait", "close", "syn_sent2",
)  # fmt: skip
#: the columns of /proc/net/stat/nf_conntrack (they vary with the kernel; ``entries`` is read
#: from nf_conntrack_count instead)
CONNTRACK_STATS = (
    "searched", "found", "new", "invalid", "ignore", "delete", "delete_list", "insert",
    "insert_failed", "drop", "early_drop", "icmp_error", "error", "expect_new", "expect_create",
    "expect_delete", "search_restart", "clashres", "chainlength",
)  # fmt: skip
#: the phases of one connection that the load series times
LOAD_PHASES = ("connect", "first_byte", "total", "close", "tls")
_LOAD_PHASE = "|".join(LOAD_PHASES)


@dataclass(frozen=True)
class Measurement:
    """One measurement: its fields (exact names, then patterns) and its tags."""

    name: str
    fields: frozenset[str]
    tags: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        compiled = tuple(re.compile(p) for p in self.patterns)
        object.__setattr__(self, "_compiled", compiled)

    def has_field(self, name: str) -> bool:
        return name in self.fields or any(p.fullmatch(name) for p in self._compiled)


#: tags every point of a run carries (the sink adds ``run`` and ``scenario``)
COMMON_TAGS = frozenset({"netns", "role", "run", "scenario"})


def _m(name: str, fields: Iterable[str], tags: Iterable[str] = (), patterns: Iterable[str] = ()):
    return Measurement(name, frozenset(fields), COMMON_TAGS | frozenset(tags), tuple(patterns))


_TEARDOWN_STATES = (
    "fin_wait1", "fin_wait2", "close_wait", "last_ack", "closing", "syn_sent", "syn_recv", "close"
)  # fmt: skip

MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        _m(TCP_STATES, [*SOCKET_STATES, "total", "exact", "loopback"], ["family"]),
        _m(
            TCP_TEARDOWN,
            [*_TEARDOWN_STATES, "orphans"],
            patterns=[rf"({'|'.join(_TEARDOWN_STATES)})_(oldest_s|max_retrans)"],
        ),
        _m(
            PORT_BUDGET,
            ["used", "time_wait", "capacity", "utilisation", "slope_per_s", "seconds_left"],
            ["family", "src", "dst", "dport"],
        ),
        _m(
            PORT_BUDGET_SUMMARY,
            ["groups", "outbound", "capacity", "range_lo", "range_hi", "max_used",
             "max_utilisation", "min_seconds_left"],
        ),
        _m(
            TCP_ZOMBIES,
            ["established", "keepalive", "candidates", "oldest_idle_s", "threshold_s",
             "confirmed", "unmatched"],
            ["peer"],
        ),
        _m(TCP_ZOMBIES_PEER, ["candidates", "confirmed"], ["peer"]),
        # every counter of /proc/net/netstat and /proc/net/snmp, by the kernel's own name,
        # and interval_s, the seconds their deltas cover
        _m(TCP_COUNTERS, ["interval_s"], ["group"], [r"[A-Z][A-Za-z0-9]*"]),
        # every line of /proc/net/sockstat{,6}: <protocol>_<key> (tcp_mem as tcp_mem_pages)
        _m(
            SOCKSTAT,
            ["sockets_used", "tcp_mem_pages"],
            patterns=[r"(tcp|udp|udplite|raw|frag)6?_(inuse|orphan|tw|alloc|mem|memory)"],
        ),
        _m(
            CONNTRACK,
            ["entries", "max", "utilisation"],
            # tcp_<conntrack state>; the increases of /proc/net/stat/nf_conntrack's columns
            patterns=[
                rf"tcp_({'|'.join(CONNTRACK_TCP_STATES)})",
                rf"({'|'.join(CONNTRACK_STATS)})",
            ],
        ),
        _m(
            COLLECTOR_COST,
            ["duration_ms", "cpu_ms", "samples", "errors", "skipped_ticks", "late_ms",
             "interval_s", "dropped"],
            ["collector"],
        ),
        _m(CONTROLLER, ["rss_bytes", "cpu_s", "cpu_pct", "threads", "fds"]),
        # the proxy's and origin's trees, an external proxy's cgroup, the Locust processes
        _m(PROCESS, ["cpu_s", "cpu_pct", "threads", "busy", "rss_bytes"],
           ["pid", "cgroup", "process"]),
        _m(HOST_CPU, ["idle", "steal", "busy", "cpus"]),
        # the proxy's reloads and restarts (chaos.collect.generations); old_<sock_diag state>
        _m(
            PROXY_GENERATIONS,
            ["workers", "old_workers", "generations", "draining_s", "last_drain_s",
             "old_sockets"],
            patterns=[rf"old_({'|'.join(SOCKET_STATES)}|other)"],
        ),
        _m(LAB_ESCAPES, ["packets", "bytes", "packets_delta"]),
        _m(LAB_RESETS, ["packets", "bytes", "packets_delta"]),
        _m(LAB_FORWARDED_TO_ORIGIN, ["packets", "bytes", "packets_delta"]),
        _m(LAB_FORWARDED_TO_CLIENTS, ["packets", "bytes", "packets_delta"]),
        _m(TIME_WAIT_TIMERS, ["sockets", "max_remaining_s", "rescheduled"]),
        # the proxy log's connect() failures, all and by errno name
        _m(PROXY_ERRORS, ["connect_failed"], patterns=[r"connect_failed_E[A-Z0-9]+"]),
        _m(
            CHAOS_EVENT,
            # the annotation's text, the guard's error and early-revert mark, where the
            # schedule placed the fault; action, id, kind and target were fields before they
            # became tags, and the report reads both
            ["title", "error", "elsewhere", "reversible", "spec", "window", "step", "at",
             "action", "id", "kind", "target"],
            ["action", "id", "kind", "target"],
        ),
        _m(
            LOAD,
            ["users", "started", "completed", "failed", "late"],
            patterns=[rf"({_LOAD_PHASE})_count", rf"({_LOAD_PHASE})_(p50|p90|p99|max)_us"],
        ),
        _m(LOAD_FAILURES, ["count"], ["class"]),
    )
}


def measurement(name: str) -> Measurement:
    """The measurement ``name``; KeyError for a name nothing writes."""
    return MEASUREMENTS[name]
