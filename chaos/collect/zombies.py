"""Zombie ESTABLISHED connections: candidates in one namespace, confirmed against the peer's.

A *candidate* is an ESTABLISHED socket with no keepalive timer pending (``idiag_timer`` is not
2) that has received nothing for ``idle_threshold_s``: ``min(tcpi_last_data_recv,
tcpi_last_ack_recv)``, so ACK-only traffic (a peer that still answers) keeps it alive. With
keepalive the kernel would reap it; without, nothing will.

A candidate is *confirmed* when its peer has no socket for the same connection:
:func:`confirm_zombies` takes the candidates of one namespace and a :class:`SocketTuples`
census of the peer's namespace (every socket's 4-tuple), or looks each one up live.

Cost: the scan asks for ``tcp_info`` of every ESTABLISHED socket (~400-byte records; ~1.3 us
per socket in the kernel here), so it is a separate collector with its own period (default
10 s) rather than part of the per-second census.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chaos.collect import sockdiag as sd
from chaos.collect.base import Sample, time_ns_of
from chaos.collect.census import info_offset, record_format
from chaos.collect.nsref import NetnsRef


@dataclass(frozen=True)
class Conn:
    """One connection as seen from its local end."""

    family: int
    tuple36: bytes  # sport (be16) + dport (be16) + src (16) + dst (16), as sock_diag has it
    idle_s: float = 0.0
    cookie: int = 0

    @property
    def sport(self) -> int:
        return int.from_bytes(self.tuple36[0:2], "big")

    @property
    def dport(self) -> int:
        return int.from_bytes(self.tuple36[2:4], "big")

    @property
    def src(self) -> str:
        return sd.addr_text(self.family, self.tuple36[4:20])

    @property
    def dst(self) -> str:
        return sd.addr_text(self.family, self.tuple36[20:36])

    def reversed_tuple(self) -> bytes:
        """The same connection as its peer's socket has it."""
        t = self.tuple36
        return t[2:4] + t[0:2] + t[20:36] + t[4:20]

    def describe(self) -> str:
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport} idle {self.idle_s:.1f}s"


@dataclass
class ZombieReport:
    netns: str
    time: float
    threshold_s: float
    established: int = 0
    keepalive: int = 0  # ESTABLISHED sockets with a keepalive timer pending
    candidates: list[Conn] = field(default_factory=list)
    cost_ms: float = 0.0

    @property
    def oldest_idle_s(self) -> float | None:
        return max((c.idle_s for c in self.candidates), default=None)


def scan(diag: sd.InetDiag, threshold_s: float, netns: str = "") -> ZombieReport:
    """One ESTABLISHED dump with tcp_info; candidates are picked out in a comprehension."""
    t0 = time.perf_counter()
    report = ZombieReport(netns=netns, time=time.time(), threshold_s=threshold_s)
    limit_ms = int(threshold_s * 1000)
    found: list[tuple[int, bytes, int, int]] = []
    for run in diag.dump(sd.AF_ANY, sd.states_mask([sd.ESTABLISHED]), ext=sd.EXT_INFO):
        report.established += run.count
        off = info_offset(run)
        if off is None:
            rows: Iterable[tuple] = _slow_rows(run)
        else:
            rows = record_format("zombie", run.size, off).iter_unpack(run.view)
        for family, timer, tuple36, cookie, drecv, arecv in rows:
            if timer == sd.TIMER_KEEPALIVE:
                report.keepalive += 1
            elif drecv >= limit_ms and arecv >= limit_ms:
                found.append((family, tuple36, min(drecv, arecv), cookie))
    report.candidates = [Conn(f, t, idle / 1000, c) for f, t, idle, c in found]
    report.cost_ms = (time.perf_counter() - t0) * 1000
    return report


def _slow_rows(run: sd.Run) -> Iterable[tuple[int, int, bytes, int, int, int]]:
    """Records whose tcp_info sits at different offsets: parsed one by one."""
    data = run.view.tobytes()
    for i in range(run.count):
        rec = data[i * run.size : (i + 1) * run.size]
        off = sd.find_attr(rec, sd.INET_DIAG_INFO)
        if off is None or off + 60 > len(rec):
            continue
        drecv, arecv = struct.unpack_from("=II", rec, off + 52)
        cookie = struct.unpack_from("=Q", rec, sd.OFF_COOKIE)[0]
        yield rec[16], rec[18], rec[20:56], cookie, drecv, arecv


@dataclass
class SocketTuples:
    """Every TCP socket's (family, 4-tuple) in one namespace: the peer side of a check."""

    netns: str
    tuples: frozenset[tuple[int, bytes]]

    def __contains__(self, item: tuple[int, bytes]) -> bool:
        return item in self.tuples

    def __len__(self) -> int:
        return len(self.tuples)


def socket_tuples(diag: sd.InetDiag, netns: str = "") -> SocketTuples:
    """All non-listening sockets' 4-tuples (two walks: timewait and full sockets)."""
    found: set[tuple[int, bytes]] = set()
    for states in (
        frozenset({sd.TIME_WAIT}),
        sd.ALL_STATES - {sd.TIME_WAIT, sd.LISTEN},
    ):
        for run in diag.dump(sd.AF_ANY, sd.states_mask(states)):
            found.update(_tuple_format(run.size).iter_unpack(run.view))
    return SocketTuples(netns, frozenset(found))


_TUPLE_FORMATS: dict[int, struct.Struct] = {}


def _tuple_format(size: int) -> struct.Struct:
    fmt = _TUPLE_FORMATS.get(size)
    if fmt is None:
        fmt = _TUPLE_FORMATS[size] = struct.Struct(f"=16xB3x36s{size - 56}x")
    return fmt


def confirm_zombies(
    local: ZombieReport,
    peer: SocketTuples,
    translate: Callable[[Conn], tuple[int, bytes] | None] | None = None,
) -> list[Conn]:
    """Candidates of ``local`` whose connection has no socket in ``peer``'s census.

    ``translate`` maps a candidate to the (family, 4-tuple) its peer socket would have when
    something between them rewrites addresses (NAT, a transparent proxy); by default the
    peer's socket is the mirror image (ports and addresses swapped). Returning None skips it.
    """
    confirmed = []
    for conn in local.candidates:
        key = translate(conn) if translate else (conn.family, conn.reversed_tuple())
        if key is not None and key not in peer:
            confirmed.append(conn)
    return confirmed


class ZombieScan:
    """``tcp_zombies`` for one namespace; optionally confirmed against a peer namespace."""

    name = "zombies"

    def __init__(
        self,
        ns: NetnsRef,
        *,
        idle_threshold_s: float = 60.0,
        period: float = 10.0,
        peer: NetnsRef | None = None,
        translate: Callable[[Conn], tuple[int, bytes] | None] | None = None,
        tags: dict[str, str] | None = None,
        diag: sd.InetDiag | None = None,
    ) -> None:
        self.ns = ns
        self.netns = ns.label
        self.threshold_s = idle_threshold_s
        self.period = period
        self.tags = {"netns": ns.label, **(tags or {})}
        # one sock_diag socket per namespace when given one (collectors_for shares it)
        self.diag = diag.acquire() if diag is not None else sd.InetDiag.open_in(ns)
        self.peer = peer
        self.translate = translate
        self.peer_diag = sd.InetDiag.open_in(peer) if peer is not None else None
        self.last: ZombieReport | None = None
        self.confirmed: list[Conn] = []

    def take(self) -> ZombieReport:
        report = scan(self.diag, self.threshold_s, self.netns)
        if self.peer_diag is not None and report.candidates:
            peer = socket_tuples(self.peer_diag, self.peer.label if self.peer else "")
            self.confirmed = confirm_zombies(report, peer, self.translate)
        else:
            self.confirmed = []
        self.last = report
        return report

    def sample(self, now: float) -> list[Sample]:
        report = self.take()
        fields: dict[str, int | float] = {
            "established": report.established,
            "keepalive": report.keepalive,
            "candidates": len(report.candidates),
            "threshold_s": report.threshold_s,
        }
        if report.oldest_idle_s is not None:
            fields["oldest_idle_s"] = round(report.oldest_idle_s, 3)
        tags = dict(self.tags)
        if self.peer is not None:
            fields["confirmed"] = len(self.confirmed)
            tags["peer"] = self.peer.label
        return [Sample("tcp_zombies", tags, fields, time_ns_of(now))]

    def close(self) -> None:
        self.diag.close()
        if self.peer_diag is not None:
            self.peer_diag.close()
