"""Socket census through sock_diag: how many TCP sockets in each state, and teardown ages.

Where the time goes (profiled with ``perf`` at 250k sockets, half ESTABLISHED, half
TIME_WAIT): the kernel, not Python. Every dump walks the kernel's whole established hash
(~25 ms at 250k sockets even when nothing matches: cache misses) and then fills a record per
matching socket (~0.3 us for a TIME_WAIT socket, ~0.8 us for a full one). With records
digested column-wise or by ``struct.iter_unpack`` in C, Python's share is small. So the
census avoids dumping sockets it only needs to *count*:

* ``mode="derive"`` (default): one walk. Every state except ESTABLISHED, TIME_WAIT and
  LISTEN is dumped (both directions, both families, with ``tcp_info`` for ages); LISTEN comes
  from the listener table (no walk); the ESTABLISHED and TIME_WAIT totals come from the
  namespace's own counters: ``CurrEstab`` (/proc/net/snmp, counts ESTABLISHED + CLOSE_WAIT,
  so CLOSE_WAIT is subtracted) and ``tw`` (sockstat, counts timewait sockets, including
  orphaned FIN_WAIT2 ones, which are subtracted). Per-family counts are then only given for
  the dumped states.
* ``mode="exact"``: three walks; ESTABLISHED and TIME_WAIT sockets are dumped too and
  counted per family, column-wise (the state and family bytes of every record, read with
  stride slices).
* ``mode="auto"``: exact below :data:`AUTO_EXACT_LIMIT` sockets, derive above; each result
  says which one it used.

Both families always share one walk (:data:`~chaos.kernel.sockdiag.AF_ANY`).

"Age" per state (``<state>_oldest_s``; the largest over the sockets in that state):

* FIN_WAIT1: ``tcpi_last_data_sent``: time since our last data segment. The FIN follows it;
  a socket stuck behind a zero window sends no data (probes are not data), so this grows for
  as long as it is stuck. A FIN sent long after the last data overstates it.
* FIN_WAIT2 kept as a timewait socket (orphaned, after ``close()``): ``tcp_fin_timeout``
  minus the timer's remaining time, i.e. time since the peer acknowledged our FIN.
* FIN_WAIT2 still owned by a process, CLOSE_WAIT, LAST_ACK, CLOSING: ``tcpi_last_ack_recv``:
  time since the peer last sent anything (every segment after the handshake carries an ACK).
  For CLOSE_WAIT that is normally the peer's FIN: how long the application has not closed.
* SYN_SENT, SYN_RECV: no age; ``<state>_max_retrans`` is the highest SYN (SYN-ACK)
  retransmit count instead.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from chaos.collect.kernel import PROC_NET, parse_netstat, parse_sockstat
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef, ProcFiles
from chaos.record.point import Sample, time_ns_of
from chaos.record.schema import FAMILY_ALL, TCP_STATES, TCP_TEARDOWN

# states dumped socket by socket in every mode: usually few sockets
RARE = sd.ALL_STATES - {sd.ESTABLISHED, sd.TIME_WAIT, sd.LISTEN}

FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}

Mode = Literal["derive", "exact", "auto"]

# "auto" counts exactly below this many sockets (sockstat inuse + tw), derives above
AUTO_EXACT_LIMIT = 20_000


# --- record formats ------------------------------------------------------------------------

_FORMATS: dict[tuple[str, int, int], struct.Struct] = {}


def record_format(kind: str, size: int, info_off: int = 0) -> struct.Struct:
    """A cached ``struct.Struct`` that reads one record of ``size`` bytes.

    kinds: "group" -> (family, state, dport+src+dst), "listen" -> (family, sport),
    "rare" -> (family, state, timer, retrans, sport, dport+src+dst, expires, inode),
    "rare_info" -> the same + tcpi_last_data_sent, tcpi_last_data_recv, tcpi_last_ack_recv,
    "zombie" -> (family, timer, sport+dport+src+dst, cookie, last_data_recv, last_ack_recv).
    """
    key = (kind, size, info_off)
    fmt = _FORMATS.get(key)
    if fmt is None:
        # tcp_info (include/uapi/linux/tcp.h): last_data_sent @44, last_ack_sent @48,
        # last_data_recv @52, last_ack_recv @56
        if kind == "group":
            text = f"=16xBB4x34s{size - 56}x"
        elif kind == "listen":
            text = f"=16xB3x2s{size - 22}x"
        elif kind == "rare":
            text = f"=16xBBBB2s34s12xI12xI{size - 88}x"
        elif kind == "rare_info":
            text = f"=16xBBBB2s34s12xI12xI{info_off - 88 + 44}xI4xII{size - info_off - 60}x"
        elif kind == "zombie":
            text = f"=16xBxBx36s4xQ{info_off - 68 + 52}xII{size - info_off - 60}x"
        else:
            raise ValueError(kind)
        fmt = _FORMATS[key] = struct.Struct(text)
    return fmt


def info_offset(run: sd.Run) -> int | None:
    """Offset of the tcp_info payload if it is the same in every record of the run."""
    size = run.size
    off = sd.find_attr(run.view[:size], sd.INET_DIAG_INFO)
    if off is None or off + 60 > size:
        return None
    if run.count > 1:
        # the attribute header (len u16, type u16) right before the payload must be the
        # same in every record; checked column-wise, like the record lengths
        for pos in range(off - 4, off):
            col = run.view[pos::size].tobytes()
            if col.count(col[0]) != len(col):
                return None
    return off


def listening(diag: sd.InetDiag, counts: Counter[tuple[int, int]] | None = None) -> set[int]:
    """Ports with a listener (any address, any family); listeners are not in the big hash."""
    ports: set[int] = set()
    for run in diag.dump(sd.AF_ANY, sd.states_mask([sd.LISTEN])):
        for family, port in record_format("listen", run.size).iter_unpack(run.view):
            ports.add(int.from_bytes(port, "big"))
            if counts is not None:
                counts[family, sd.LISTEN] += 1
    return ports


# --- results ----------------------------------------------------------------------------------


@dataclass
class StateAges:
    count: int = 0
    oldest_s: float | None = None
    max_retrans: int = 0

    def see(self, age_s: float | None, retrans: int) -> None:
        self.count += 1
        if age_s is not None and (self.oldest_s is None or age_s > self.oldest_s):
            self.oldest_s = age_s
        if retrans > self.max_retrans:
            self.max_retrans = retrans


@dataclass
class CensusResult:
    netns: str
    time: float
    mode: Mode
    states: dict[str, int]  # every state, both families
    by_family: dict[str, dict[str, int]]  # derive mode: dumped states only (not EST/TW)
    teardown: dict[str, StateAges]  # the RARE states, with ages
    orphans: int  # full sockets without a file (closed by their process)
    costs_ms: dict[str, float] = field(default_factory=dict)
    loopback: int | None = None  # sockets left out of the counts (exclude_loopback)

    @property
    def total(self) -> int:
        return sum(self.states.values())


# --- the collector -----------------------------------------------------------------------


class SocketCensus:
    """Per-namespace TCP states (``tcp_states``) and teardown ages (``tcp_teardown``)."""

    name = "census"

    def __init__(
        self,
        ns: NetnsRef,
        *,
        mode: Mode = "derive",
        period: float = 0.0,
        tags: dict[str, str] | None = None,
        auto_limit: int = AUTO_EXACT_LIMIT,
        diag: sd.InetDiag | None = None,
        exclude_loopback: bool = False,
    ) -> None:
        """``exclude_loopback``: leave out sockets whose local address is 127.0.0.0/8, e.g.
        the load generator's own control connections (Locust's master and workers talk
        over 127.0.0.1 in the client namespace); they are counted in ``loopback``."""
        self.ns = ns
        self.exclude_loopback = exclude_loopback
        self.netns = ns.label
        self.mode: Mode = mode
        self.auto_limit = auto_limit
        self.period = period
        self.tags = {"netns": ns.label, **(tags or {})}
        # one sock_diag socket per namespace when given one (collectors_for shares it)
        self.diag = diag.acquire() if diag is not None else sd.InetDiag.open_in(ns)
        self._files = ProcFiles(
            ns,
            {
                "sockstat": f"{PROC_NET}/sockstat",
                "snmp": f"{PROC_NET}/snmp",
                "fin_timeout": "/proc/sys/net/ipv4/tcp_fin_timeout",
            },
        )

    def close(self) -> None:
        self.diag.close()
        self._files.close()

    def _rare(
        self,
        fin_timeout: int,
        counts: Counter[tuple[int, int]],
        teardown: dict[str, StateAges],
    ) -> tuple[int, int]:
        """Every state but ESTABLISHED/TIME_WAIT/LISTEN, both directions, with tcp_info.

        Returns (orphans, FIN_WAIT2 sockets that are really timewait sockets).
        """
        orphans = 0
        fw2_tw = 0
        for run in self.diag.dump(sd.AF_ANY, sd.states_mask(RARE), ext=sd.EXT_INFO):
            off = info_offset(run)
            rows: Iterable[tuple]
            if off is not None:
                rows = record_format("rare_info", run.size, off).iter_unpack(run.view)
            else:  # timewait and request sockets carry no tcp_info
                plain = record_format("rare", run.size).iter_unpack(run.view)
                rows = ((*r, None, None, None) for r in plain)
            for family, state, timer, retrans, _sp, _key, expires, inode, dsent, _dr, arecv in rows:
                counts[family, state] += 1
                full = dsent is not None
                if full and inode == 0:
                    orphans += 1  # no file behind it: its process closed it
                age: float | None = None
                if state == sd.FIN_WAIT1 and full:
                    age = dsent / 1000
                elif state == sd.FIN_WAIT2 and timer == sd.TIMER_TIME_WAIT:
                    fw2_tw += 1
                    age = max(0.0, fin_timeout - expires / 1000)
                elif full and state in (sd.FIN_WAIT2, sd.CLOSE_WAIT, sd.LAST_ACK, sd.CLOSING):
                    age = arecv / 1000
                name = sd.STATE_NAMES.get(state)
                if name in teardown:
                    teardown[name].see(age, retrans)
        return orphans, fw2_tw

    def _count_all(self, state: int, counts: Counter[tuple[int, int]]) -> None:
        """One walk that only counts: the family and state bytes of each record, column-wise."""
        for run in self.diag.dump(sd.AF_ANY, sd.states_mask([state])):
            size = run.size
            fams = run.view[sd.OFF_STATE - 1 :: size].tobytes()
            states = run.view[sd.OFF_STATE :: size].tobytes()
            counts.update(zip(fams, states, strict=True))

    def _loopback(self) -> Counter[tuple[int, int]]:
        """(family, state) counts of the sockets on 127.0.0.0/8: one filtered walk."""
        counts: Counter[tuple[int, int]] = Counter()
        wanted = sd.states_mask(sd.ALL_STATES - {sd.LISTEN})
        loopback = sd.bc_source_net(socket.AF_INET, "127.0.0.0", 8)
        for run in self.diag.dump(socket.AF_INET, wanted, bytecode=loopback):
            size = run.size
            fams = run.view[sd.OFF_STATE - 1 :: size].tobytes()
            states = run.view[sd.OFF_STATE :: size].tobytes()
            counts.update(zip(fams, states, strict=True))
        return counts

    def take(self, now: float | None = None) -> CensusResult:
        now = time.time() if now is None else now
        costs: dict[str, float] = {}
        clock = time.perf_counter
        t0 = clock()
        fin_timeout = int(self._files.read("fin_timeout").strip() or 60)
        sockstat = parse_sockstat(self._files.read("sockstat"))
        snmp = parse_netstat(self._files.read("snmp"))
        mode = self.mode
        if mode == "auto":
            tcp = sockstat.get("TCP", {})
            mode = "exact" if tcp.get("inuse", 0) + tcp.get("tw", 0) < self.auto_limit else "derive"

        counts: Counter[tuple[int, int]] = Counter()
        teardown = {sd.STATE_NAMES[s]: StateAges() for s in sorted(RARE)}
        listening(self.diag, counts)
        t1 = clock()
        costs["listen"] = (t1 - t0) * 1000
        orphans, fw2_tw = self._rare(fin_timeout, counts, teardown)
        t2 = clock()
        costs["rest"] = (t2 - t1) * 1000
        if mode == "exact":
            self._count_all(sd.TIME_WAIT, counts)
            self._count_all(sd.ESTABLISHED, counts)
            costs["established_time_wait"] = (clock() - t2) * 1000

        by_family: dict[str, dict[str, int]] = {}
        states = dict.fromkeys(sd.STATE_NAMES.values(), 0)
        for (family, state), n in counts.items():
            name = sd.STATE_NAMES.get(state)
            fam = FAMILY_NAMES.get(family)
            if name is None or fam is None:
                continue
            states[name] += n
            by_family.setdefault(fam, dict.fromkeys(sd.STATE_NAMES.values(), 0))[name] += n

        if mode == "derive":
            tw = sockstat.get("TCP", {}).get("tw")
            if tw is not None:
                states["time_wait"] = max(0, tw - fw2_tw)
            curr = snmp.get("Tcp", {}).get("CurrEstab")
            if curr is not None:
                states["established"] = max(0, curr - states["close_wait"])
            for per in by_family.values():  # not dumped, so not split by family
                del per["established"], per["time_wait"]
        if self.exclude_loopback:
            loopback = 0
            for (family, state), n in self._loopback().items():
                name = sd.STATE_NAMES.get(sd.SYN_RECV if state == sd.NEW_SYN_RECV else state)
                if name is None:
                    continue
                loopback += n
                states[name] = max(0, states[name] - n)
                per = by_family.get(FAMILY_NAMES.get(family, ""), {})
                if name in per:
                    per[name] = max(0, per[name] - n)
            states_loopback = loopback
        else:
            states_loopback = None

        costs["total"] = (clock() - t0) * 1000
        return CensusResult(
            netns=self.netns,
            time=now,
            mode=mode,
            states=states,
            by_family=by_family,
            teardown=teardown,
            orphans=orphans,
            costs_ms=costs,
            loopback=states_loopback,
        )

    def sample(self, now: float) -> list[Sample]:
        return census_samples(self.take(now), self.tags)


def census_samples(result: CensusResult, tags: dict[str, str]) -> list[Sample]:
    stamp = time_ns_of(result.time)
    out = []
    states: dict[str, int | float | bool] = dict(result.states)
    states["total"] = result.total
    states["exact"] = result.mode == "exact"  # False: no per-family split of EST/TW
    if result.loopback is not None:
        states["loopback"] = result.loopback  # left out of every state above
    out.append(Sample(TCP_STATES, {**tags, "family": FAMILY_ALL}, states, stamp))
    for fam, counts in sorted(result.by_family.items()):
        fields: dict[str, int | float] = dict(counts)
        if result.mode == "exact":
            fields["total"] = sum(counts.values())
        out.append(Sample(TCP_STATES, {**tags, "family": fam}, fields, stamp))

    teardown: dict[str, int | float] = {"orphans": result.orphans}
    for name, ages in result.teardown.items():
        teardown[name] = ages.count
        if ages.oldest_s is not None:
            teardown[f"{name}_oldest_s"] = round(ages.oldest_s, 3)
        if name in ("fin_wait1", "syn_sent", "syn_recv", "last_ack", "closing"):
            teardown[f"{name}_max_retrans"] = ages.max_retrans
    out.append(Sample(TCP_TEARDOWN, dict(tags), teardown, stamp))
    return out
