"""Zombie ESTABLISHED connections: candidates in one namespace, confirmed against the peer's.

A *candidate* is an ESTABLISHED socket with no keepalive timer pending (``idiag_timer`` is not
2) that has received nothing for ``idle_threshold_s``: ``min(tcpi_last_data_recv,
tcpi_last_ack_recv)``, so ACK-only traffic (a peer that still answers) keeps it alive. With
keepalive the kernel would reap it; without, nothing will.

A candidate is *confirmed* when its peer has no socket for the same connection:
:func:`confirm_zombies` takes the candidates of one namespace and a :class:`SocketTuples`
census of the peer's namespace (every socket's 4-tuple), or looks each one up live.

Which namespace is "the peer" depends on the connection: a proxy talks to clients on one
side and to the origin on the other. :class:`ZombiePeer` says where the other end of the
connections to a remote network lives (and how a NAT on the way rewrote the tuple:
:func:`nat`); a :class:`ZombieScan` with several routes each candidate by its remote
address. :func:`peers_from_rules` builds them from the lab's addressing
(:meth:`chaos.lab.topology.Plan.peer_rules`).

Outside a lab (standalone ``chaos collect``) nobody knows the routes, so ``host_peers``
looks for the peer on this host: :func:`confirm_on_host` finds every namespace this
process can see (named ones and those of running processes) that owns the candidate's
remote address, and confirms the candidate when none of them holds the mirrored 4-tuple.
A peer on another host (no namespace here owns its address) cannot be checked: the
candidate stays *unmatched*, never confirmed.

Cost: the scan asks for ``tcp_info`` of every ESTABLISHED socket (~400-byte records; ~1.3 us
per socket in the kernel here), so it is a separate collector with its own period (default
10 s) rather than part of the per-second census.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chaos.collect.census import info_offset, record_format
from chaos.errors import ChaosError
from chaos.kernel import netns as netns_mod
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.record import schema
from chaos.record.point import Sample, time_ns_of

if TYPE_CHECKING:
    from chaos.lab.topology import PeerRule


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


Key = tuple[int, bytes]  # (family, 4-tuple as sock_diag has it)
#: maps a candidate to the key its peer's socket would have, or to the keys it may have (any
#: of them present: not a zombie); None: cannot tell, never confirmed
Translate = Callable[[Conn], Key | list[Key] | None]


def confirm_zombies(
    local: ZombieReport | Sequence[Conn],
    peer: SocketTuples,
    translate: Translate | None = None,
) -> list[Conn]:
    """Candidates (of a report, or given) whose connection has no socket in ``peer``'s census.

    ``translate`` maps a candidate to the (family, 4-tuple) its peer socket would have when
    something between them rewrites addresses (NAT, a transparent proxy), or to a list of
    the keys it may have; by default the peer's socket is the mirror image (ports and
    addresses swapped). Returning None skips it.
    """
    conns = local.candidates if isinstance(local, ZombieReport) else local
    confirmed = []
    for conn in conns:
        keys = translate(conn) if translate else (conn.family, conn.reversed_tuple())
        if keys is None:
            continue
        if not any(key in peer for key in (keys if isinstance(keys, list) else [keys])):
            confirmed.append(conn)
    return confirmed


def nat(seen: tuple[str, int], real: tuple[str, int]) -> Translate:
    """A :data:`Translate` for a NAT on the way: the endpoint this side knows as ``seen``
    (address, port) is ``real`` for the peer.

    E.g. a client that dialled the origin's address through a DNAT gateway: the proxy's
    socket has the proxy's address where the client has the origin's; and the proxy sees
    the client's connection at its own address, which the client knows as the origin's.
    A connection that did not go through the NAT (it reached ``seen`` directly) keeps its
    plain mirror image as a second possible key.
    """
    family = socket.AF_INET6 if ":" in seen[0] else socket.AF_INET
    old = sd.addr_bytes(family, seen[0]) + seen[1].to_bytes(2, "big")
    new = sd.addr_bytes(family, real[0]) + real[1].to_bytes(2, "big")

    def translate(conn: Conn) -> Key | list[Key]:
        m = conn.reversed_tuple()  # the peer's view: its port, remote port, its addr, remote
        local, remote = m[4:20] + m[0:2], m[20:36] + m[2:4]
        if conn.family != family or old not in (local, remote):
            return conn.family, m
        local, remote = (new if end == old else end for end in (local, remote))
        return [(family, local[16:] + remote[16:] + local[:16] + remote[:16]), (family, m)]

    return translate


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ZombiePeer:
    """The other end of this namespace's connections to ``remote`` lives in ``ns``.

    ``remote`` None matches every remote address; ``translate`` as for
    :func:`confirm_zombies` (e.g. :func:`nat`).
    """

    remote: Network | None
    ns: NetnsRef
    translate: Translate | None = None

    def covers(self, address: str) -> bool:
        return self.remote is None or ipaddress.ip_address(address) in self.remote


def peers_from_rules(
    role: str, rules: Iterable[PeerRule], ref_of: Callable[[str], NetnsRef | None]
) -> list[ZombiePeer]:
    """The :class:`ZombiePeer` list of ``role`` from the lab's :class:`PeerRule` list.

    ``ref_of`` gives the namespace of a peer role (``"host"`` included), or None when it is
    not there; rules toward a missing peer are left out (their candidates stay unconfirmed).
    """
    peers = []
    for rule in rules:
        ref = ref_of(rule.peer) if rule.role == role else None
        if ref is not None:
            translate = nat(*rule.nat) if rule.nat else None
            peers.append(ZombiePeer(ipaddress.ip_network(rule.remote), ref, translate))
    return peers


_V4_PAD = bytes(12)  # sock_diag's AF_INET address: 4 bytes, then 12 zeros
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def mirrored_keys(conn: Conn) -> list[Key]:
    """The keys the peer's socket may have: the mirror image, and for IPv4 the same
    connection as a dual-stack (``[::]``) socket sees it, with IPv4-mapped addresses (and
    the other way round)."""
    m = conn.reversed_tuple()
    keys: list[Key] = [(conn.family, m)]
    ports, src, dst = m[:4], m[4:20], m[20:36]
    if conn.family == socket.AF_INET:
        keys.append((socket.AF_INET6, ports + _MAPPED + src[:4] + _MAPPED + dst[:4]))
    elif src.startswith(_MAPPED) and dst.startswith(_MAPPED):
        keys.append((socket.AF_INET, ports + src[12:] + _V4_PAD + dst[12:] + _V4_PAD))
    return keys


@dataclass
class HostCheck:
    """What :func:`confirm_on_host` found: the confirmed candidates, how many had no peer
    namespace on this host, and per peer namespace (candidates checked, confirmed)."""

    confirmed: list[Conn] = field(default_factory=list)
    unmatched: int = 0
    by_peer: dict[str, tuple[int, int]] = field(default_factory=dict)


def confirm_on_host(conns: Sequence[Conn], own: NetnsRef) -> HostCheck:
    """Confirm ``conns`` (candidates of namespace ``own``) against every namespace of this
    host that owns their remote address.

    A remote address ``own`` owns itself (loopback included) is delivered locally, so only
    ``own`` is checked for it. Namespaces are enumerated, opened and censused once per call,
    and closed before it returns; one that cannot be entered owns nothing. A DNAT on the
    way (a published container port) gives the peer's socket another 4-tuple: such a
    candidate is confirmed wrongly; ``chaos run`` knows its lab's NAT, standalone collect
    does not.
    """
    check = HostCheck()
    refs: list[NetnsRef] = []
    diags: dict[str, sd.InetDiag] = {}
    censuses: dict[str, SocketTuples] = {}
    try:
        owners: dict[str, list[NetnsRef]] = {}  # address -> the other namespaces owning it
        own_addresses = own.run(netns_mod.local_addresses)
        for label, path in netns_mod.visible_namespaces():
            try:
                ref = NetnsRef.of_path(path, label)
            except ChaosError:  # its process exited since
                continue
            if ref.inode == own.inode:
                ref.close()
                continue
            refs.append(ref)
            try:
                addresses = ref.run(netns_mod.local_addresses)
            except (ChaosError, OSError):  # one we may not enter (a container without
                continue  # CAP_SYS_ADMIN): its peers count as elsewhere
            for address in addresses:
                owners.setdefault(address, []).append(ref)
        for conn in conns:
            remote = ipaddress.ip_address(conn.dst)
            if isinstance(remote, ipaddress.IPv6Address) and remote.ipv4_mapped:
                remote = remote.ipv4_mapped
            address = str(remote)
            local = remote.is_loopback or address in own_addresses
            places = [own] if local else owners.get(address, [])
            if not places:
                check.unmatched += 1
                continue
            for ref in places:
                if ref.label not in censuses:
                    diags[ref.label] = sd.InetDiag.open_in(ref)
                    censuses[ref.label] = socket_tuples(diags[ref.label], ref.label)
            keys = mirrored_keys(conn)
            gone = not any(key in censuses[ref.label] for ref in places for key in keys)
            if gone:
                check.confirmed.append(conn)
            seen, confirmed = check.by_peer.get(places[0].label, (0, 0))
            check.by_peer[places[0].label] = (seen + 1, confirmed + gone)
    finally:
        for diag in diags.values():
            diag.close()
        for ref in refs:
            ref.close()
    return check


class ZombieScan:
    """``tcp_zombies`` for one namespace; optionally confirmed against peer namespaces.

    ``peers``: where the other end of each connection lives, chosen per candidate by its
    remote address (the first peer that covers it). ``peer`` (+ ``translate``) is the
    one-peer shorthand: every connection's other end is there. ``host_peers``: candidates
    no peer covers are looked for on this whole host (:func:`confirm_on_host`).
    """

    name = "zombies"

    def __init__(
        self,
        ns: NetnsRef,
        *,
        idle_threshold_s: float = 60.0,
        period: float = 10.0,
        peer: NetnsRef | None = None,
        translate: Translate | None = None,
        peers: Sequence[ZombiePeer] = (),
        host_peers: bool = False,
        tags: dict[str, str] | None = None,
        diag: sd.InetDiag | None = None,
    ) -> None:
        self.ns = ns
        self.netns = ns.label
        self.threshold_s = idle_threshold_s
        self.period = period
        self.tags = {"netns": ns.label, **(tags or {})}
        self.peers = list(peers)
        self.host_peers = host_peers
        if peer is not None:
            self.peers.append(ZombiePeer(None, peer, translate))
        # one sock_diag socket per namespace when given one (collectors_for shares it)
        self.diag = diag.acquire() if diag is not None else sd.InetDiag.open_in(ns)
        self._peer_diags: dict[str, sd.InetDiag] = {}  # one per peer namespace
        try:
            for p in self.peers:
                if p.ns.label not in self._peer_diags:
                    self._peer_diags[p.ns.label] = sd.InetDiag.open_in(p.ns)
        except BaseException:
            self.close()
            raise
        self._routes: dict[str, ZombiePeer | None] = {}  # remote address -> its peer
        self.last: ZombieReport | None = None
        self.confirmed: list[Conn] = []
        self.unmatched = 0  # candidates no peer covers: not checkable
        self.by_peer: dict[str, tuple[int, int]] = {}  # peer label -> (candidates, confirmed)

    def _route(self, conn: Conn) -> ZombiePeer | None:
        address = conn.dst
        if address not in self._routes:
            self._routes[address] = next((p for p in self.peers if p.covers(address)), None)
        return self._routes[address]

    @property
    def checks_peers(self) -> bool:
        return bool(self.peers) or self.host_peers

    def take(self) -> ZombieReport:
        report = scan(self.diag, self.threshold_s, self.netns)
        self.confirmed = []
        self.unmatched = 0
        self.by_peer = dict.fromkeys(self._peer_diags, (0, 0))
        routed: dict[int, tuple[ZombiePeer, list[Conn]]] = {}
        elsewhere: list[Conn] = []  # candidates no peer covers, for the host-wide check
        for conn in report.candidates if self.checks_peers else ():
            peer = self._route(conn)
            if peer is None:
                elsewhere.append(conn)
            else:
                routed.setdefault(id(peer), (peer, []))[1].append(conn)
        censuses: dict[str, SocketTuples] = {}  # one census per peer namespace and scan
        for peer, conns in routed.values():
            label = peer.ns.label
            if label not in censuses:
                censuses[label] = socket_tuples(self._peer_diags[label], label)
            gone = confirm_zombies(conns, censuses[label], peer.translate)
            self.confirmed += gone
            seen, confirmed = self.by_peer[label]
            self.by_peer[label] = (seen + len(conns), confirmed + len(gone))
        if elsewhere and self.host_peers:
            check = confirm_on_host(elsewhere, self.ns)
            self.confirmed += check.confirmed
            self.unmatched = check.unmatched
            for label, (seen, confirmed) in check.by_peer.items():
                before = self.by_peer.get(label, (0, 0))
                self.by_peer[label] = (before[0] + seen, before[1] + confirmed)
        else:
            self.unmatched = len(elsewhere)
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
        stamp = time_ns_of(now)
        per_peer = []
        if self.checks_peers:
            fields["confirmed"] = len(self.confirmed)
            fields["unmatched"] = self.unmatched
            if len(self.by_peer) == 1 and not self.host_peers:
                tags["peer"] = next(iter(self.by_peer))
            per_peer = [
                Sample(
                    schema.TCP_ZOMBIES_PEER,
                    {**self.tags, "peer": label},
                    {"candidates": seen, "confirmed": confirmed},
                    stamp,
                )
                for label, (seen, confirmed) in self.by_peer.items()
            ]
        return [Sample(schema.TCP_ZOMBIES, tags, fields, stamp), *per_peer]

    def close(self) -> None:
        self.diag.close()
        for diag in self._peer_diags.values():
            diag.close()
        self._peer_diags = {}
