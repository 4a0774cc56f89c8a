"""Collectors: socket and kernel state of every namespace involved, sampled into points.

One module per source, all with the same interface (:class:`~chaos.collect.base.Collector`:
``name``, ``netns``, ``period``, ``sample(now) -> list[Sample]``, ``close()``):

==========================  ====================================================  ============
module                      measurements                                          source
==========================  ====================================================  ============
:mod:`.census`              tcp_states, tcp_teardown                              sock_diag
:mod:`.budget`              port_budget, port_budget_summary                      sock_diag
:mod:`.zombies`             tcp_zombies                                           sock_diag
:mod:`.kernel`              tcp_counters, sockstat                                /proc/net
:mod:`.conntrack`           conntrack                                             ctnetlink
:mod:`.load_series`         load, load_failures                                   series file
:mod:`.process`             process (proxy, origin, Locust), host_cpu             /proc
:mod:`.sampler`             collector_cost                                        itself
==========================  ====================================================  ============

Build the usual set for one namespace with :func:`collectors_for`, run them with
:class:`~chaos.collect.sampler.Sampler`, render with :func:`~chaos.record.point.to_line`.
docs/metrics.md has the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

from chaos.collect.base import Collector
from chaos.collect.budget import PortBudget
from chaos.collect.census import SocketCensus
from chaos.collect.conntrack import Conntrack
from chaos.collect.kernel import KernelCounters
from chaos.collect.load_series import LoadSeries
from chaos.collect.sampler import SampleHook, Sampler
from chaos.collect.zombies import (
    ZombiePeer,
    ZombieScan,
    confirm_zombies,
    peers_from_rules,
    socket_tuples,
)
from chaos.kernel.nsref import NetnsRef
from chaos.kernel.sockdiag import InetDiag
from chaos.record.point import Sample, to_line, to_lines

__all__ = [
    "Collector",
    "Conntrack",
    "KernelCounters",
    "LoadSeries",
    "NetnsRef",
    "PortBudget",
    "Sample",
    "SampleHook",
    "Sampler",
    "SocketCensus",
    "ZombiePeer",
    "ZombieScan",
    "collectors_for",
    "confirm_zombies",
    "peers_from_rules",
    "socket_tuples",
    "to_line",
    "to_lines",
]


def collectors_for(
    ns: NetnsRef,
    *,
    tags: dict[str, str] | None = None,
    census_mode: str = "derive",
    zombie_idle_s: float = 60.0,
    zombie_period: float = 10.0,
    budget_period: float = 0.0,
    zombie_peer: NetnsRef | None = None,
    zombie_peers: Sequence[ZombiePeer] = (),
    zombie_host_peers: bool = False,
    cumulative_counters: bool = False,
    exclude_loopback: bool = False,
) -> list[Collector]:
    """The standard collectors for one namespace, each with its own sockets opened there.

    ``tags`` (e.g. ``{"role": "proxy"}``) go on every sample next to ``netns``. Zombie
    candidates are confirmed against ``zombie_peers`` (chosen per connection by its remote
    address) and/or ``zombie_peer`` (every connection); with ``zombie_host_peers`` the rest
    are looked for in every namespace of this host. ``exclude_loopback`` leaves sockets
    on 127.0.0.0/8 out of the census (the load generator's own). The caller owns the result:
    ``close()`` each collector (or :meth:`Sampler.close_collectors`).
    """
    made: list[Collector] = []
    diag = InetDiag.open_in(ns)  # one sock_diag socket for the namespace, shared
    try:
        made.append(
            SocketCensus(
                ns,
                mode=census_mode,  # type: ignore[arg-type]
                tags=tags,
                diag=diag,
                exclude_loopback=exclude_loopback,
            )
        )
        made.append(PortBudget(ns, period=budget_period, tags=tags, diag=diag))
        made.append(
            ZombieScan(
                ns,
                idle_threshold_s=zombie_idle_s,
                period=zombie_period,
                peer=zombie_peer,
                peers=zombie_peers,
                host_peers=zombie_host_peers,
                tags=tags,
                diag=diag,
            )
        )
        made.append(KernelCounters(ns, cumulative=cumulative_counters, tags=tags))
        conntrack = Conntrack(ns, tags=tags)
        if conntrack.available:
            made.append(conntrack)
        else:
            conntrack.close()
    except BaseException:
        for collector in made:
            collector.close()
        raise
    finally:
        diag.close()  # the collectors hold their own references
    return made
