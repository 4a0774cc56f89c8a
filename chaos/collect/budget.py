"""Ephemeral-port budget: ports held per (source, destination, destination port), forecast.

An outgoing connection takes its local port from ``net.ipv4.ip_local_port_range`` (less
``ip_local_reserved_ports``), and the port stays taken in SYN_SENT, ESTABLISHED, FIN_WAIT1,
FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING and TIME_WAIT. A port can be reused towards
another destination, so the budget is per (source address, destination address, destination
port) group: ``used / capacity`` is the group's utilisation. node_exporter declined this
metric because it depends on the 4-tuple; it is exactly what a TIME_WAIT pile-up exhausts.

Which sockets count: *outbound* ones, i.e. local port inside the range and not a port that
has (or had, in the last ``listen_memory_s`` seconds) a listener: inbound connections carry
the listener's port, and their TIME_WAIT sockets outlive it by a minute. The kernel does that
selection with a bytecode filter (:func:`~chaos.kernel.sockdiag.outbound_filter`), so
inbound sockets are never copied out. Inbound sockets of a listener gone for longer, or
never seen by this collector, are taken for outbound ones (one tiny group per peer port).
Two walks per sample: TIME_WAIT, and the other port-holding states (their record sizes
differ; one size per walk keeps digestion in C).

Forecast: each tracked group keeps ``(time, used)`` for the last ``history_s`` seconds; the
least-squares slope gives ``seconds_left = (capacity - used) / slope`` when rising.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from chaos.collect.census import FAMILY_NAMES, listening, record_format
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef, ProcFiles
from chaos.record import schema
from chaos.record.point import Sample, time_ns_of

PORT_HOLDING = frozenset(
    {
        sd.SYN_SENT,
        sd.ESTABLISHED,
        sd.FIN_WAIT1,
        sd.FIN_WAIT2,
        sd.CLOSE_WAIT,
        sd.LAST_ACK,
        sd.CLOSING,
        sd.TIME_WAIT,
    }
)
FULL_HOLDING = PORT_HOLDING - {sd.TIME_WAIT}

# forecast history per group: at most this many points (and at most history_s seconds)
HISTORY_POINTS = 64

# the bytecode attribute length is a u16: keep the per-listener exclusions well below it
MAX_EXCLUDED_PORTS = 4000


def parse_port_range(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split()[:2])
    return lo, hi


def count_reserved(text: str, lo: int, hi: int) -> int:
    """How many ports of [lo, hi] ``ip_local_reserved_ports`` ("8080,9000-9100") takes out."""
    taken: set[int] = set()
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        a, b = int(first), int(last or first)
        taken.update(range(max(a, lo), min(b, hi) + 1))
    return len(taken)


# --- forecast ------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope (units per second) of (time, value) points; None below 2 points."""
    n = len(points)
    if n < 2:
        return None
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    ys = [v for _, v in points]
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def seconds_left(points: Sequence[tuple[float, float]], capacity: int) -> float | None:
    """Seconds until ``capacity`` is reached at the recent slope; None when not rising.

    0 when the last point is already at or over capacity.
    """
    if not points:
        return None
    used = points[-1][1]
    if used >= capacity:
        return 0.0
    rate = slope(points)
    if rate is None or rate <= 0:
        return None
    return (capacity - used) / rate


# --- results -------------------------------------------------------------------------------


@dataclass
class GroupUse:
    """Ports held towards one (source address, destination address, destination port)."""

    family: int
    key: bytes  # dport (be16) + src (16) + dst (16), as sock_diag has them
    used: int = 0
    time_wait: int = 0
    slope_per_s: float | None = None
    seconds_left: float | None = None

    @property
    def dport(self) -> int:
        return int.from_bytes(self.key[:2], "big")

    @property
    def src(self) -> str:
        return sd.addr_text(self.family, self.key[2:18])

    @property
    def dst(self) -> str:
        return sd.addr_text(self.family, self.key[18:34])

    def utilisation(self, capacity: int) -> float:
        return self.used / capacity if capacity else 0.0


@dataclass
class BudgetResult:
    netns: str
    time: float
    port_range: tuple[int, int]
    capacity: int
    listen_ports: set[int]
    groups: list[GroupUse]  # every group, most used first
    outbound: dict[str, int]  # outbound port holders per state
    costs_ms: dict[str, float] = field(default_factory=dict)

    def group(self, src: str, dst: str, dport: int) -> GroupUse | None:
        for use in self.groups:
            if use.dport == dport and use.src == src and use.dst == dst:
                return use
        return None


class PortBudget:
    """Per-namespace ephemeral-port budget: ``port_budget`` and ``port_budget_summary``."""

    name = "port_budget"

    def __init__(
        self,
        ns: NetnsRef,
        *,
        top: int = 10,
        history_s: float = 30.0,
        track: int = 256,
        period: float = 0.0,
        listen_memory_s: float = 120.0,
        tags: dict[str, str] | None = None,
        diag: sd.InetDiag | None = None,
    ) -> None:
        self.ns = ns
        self.netns = ns.label
        self.top = top
        self.listen_memory_s = listen_memory_s
        self._listened: dict[int, float] = {}  # port -> last time a listener was seen
        self.history_s = history_s
        self.track = track
        self.period = period
        self.tags = {"netns": ns.label, **(tags or {})}
        # one sock_diag socket per namespace when given one (collectors_for shares it)
        self.diag = diag.acquire() if diag is not None else sd.InetDiag.open_in(ns)
        self._files = ProcFiles(
            ns,
            {
                "range": "/proc/sys/net/ipv4/ip_local_port_range",
                "reserved": "/proc/sys/net/ipv4/ip_local_reserved_ports",
            },
        )
        self._history: dict[tuple[int, bytes], deque[tuple[float, int]]] = {}

    def close(self) -> None:
        self.diag.close()
        self._files.close()

    def _walk(self, states: frozenset[int], bytecode: bytes, groups: Counter) -> None:
        for run in self.diag.dump(sd.AF_ANY, sd.states_mask(states), bytecode=bytecode):
            groups.update(record_format("group", run.size).iter_unpack(run.view))

    def take(self, now: float | None = None) -> BudgetResult:
        now = time.time() if now is None else now
        clock = time.perf_counter
        t0 = clock()
        lo, hi = parse_port_range(self._files.read("range") or "32768 60999")
        capacity = max(0, hi - lo + 1 - count_reserved(self._files.read("reserved"), lo, hi))
        listen = listening(self.diag)
        for port in listen:
            self._listened[port] = now
        forget = now - self.listen_memory_s
        self._listened = {p: t for p, t in self._listened.items() if t >= forget}
        excluded = sorted(p for p in self._listened if lo <= p <= hi)[:MAX_EXCLUDED_PORTS]
        bytecode = sd.outbound_filter(lo, hi, excluded)
        t1 = clock()

        # (family, state, dport+src+dst) -> sockets; a few entries per destination
        groups: Counter[tuple[int, int, bytes]] = Counter()
        self._walk(frozenset({sd.TIME_WAIT}), bytecode, groups)
        t2 = clock()
        self._walk(FULL_HOLDING, bytecode, groups)
        t3 = clock()

        merged: dict[tuple[int, bytes], GroupUse] = {}
        outbound: Counter[str] = Counter()
        for (family, state, key), n in groups.items():
            # FIN_WAIT2 kept as a timewait socket still holds its port
            outbound[sd.STATE_NAMES.get(state, str(state))] += n
            use = merged.get((family, key))
            if use is None:
                use = merged[family, key] = GroupUse(family, key)
            use.used += n
            if state == sd.TIME_WAIT:
                use.time_wait += n
        ordered = sorted(merged.values(), key=lambda g: g.used, reverse=True)
        self._forecast(ordered, capacity, now)
        costs = {
            "listen": (t1 - t0) * 1000,
            "time_wait": (t2 - t1) * 1000,
            "other_states": (t3 - t2) * 1000,
            "total": (clock() - t0) * 1000,
        }
        return BudgetResult(
            netns=self.netns,
            time=now,
            port_range=(lo, hi),
            capacity=capacity,
            listen_ports=listen,
            groups=ordered,
            outbound=dict(outbound),
            costs_ms=costs,
        )

    def _forecast(self, ordered: list[GroupUse], capacity: int, now: float) -> None:
        """Append to the history of the busiest ``track`` groups and derive their slope."""
        keep: dict[tuple[int, bytes], deque[tuple[float, int]]] = {}
        horizon = now - self.history_s
        for use in ordered[: self.track]:
            gkey = (use.family, use.key)
            hist = self._history.get(gkey) or deque(maxlen=HISTORY_POINTS)
            hist.append((now, use.used))
            while hist and hist[0][0] < horizon:
                hist.popleft()
            keep[gkey] = hist
            use.slope_per_s = slope(hist)
            use.seconds_left = seconds_left(hist, capacity)
        self._history = keep  # groups that vanished (or fell out of the top) lose history

    def sample(self, now: float) -> list[Sample]:
        return budget_samples(self.take(now), self.tags, self.top)


def top_groups(groups: list[GroupUse], top: int) -> list[GroupUse]:
    """The ``top`` busiest groups, plus up to ``top`` more that run out soonest."""
    chosen = groups[:top]
    seen = {id(g) for g in chosen}
    soonest = sorted(
        (g for g in groups if g.seconds_left is not None and id(g) not in seen),
        key=lambda g: g.seconds_left or 0.0,
    )
    return chosen + soonest[:top]


def budget_samples(result: BudgetResult, tags: dict[str, str], top: int) -> list[Sample]:
    stamp = time_ns_of(result.time)
    max_used = result.groups[0].used if result.groups else 0
    summary: dict[str, int | float] = {
        "groups": len(result.groups),
        "outbound": sum(result.outbound.values()),
        "capacity": result.capacity,
        "range_lo": result.port_range[0],
        "range_hi": result.port_range[1],
        "max_used": max_used,
    }
    if result.capacity:
        summary["max_utilisation"] = round(max_used / result.capacity, 6)
    lefts = [g.seconds_left for g in result.groups if g.seconds_left is not None]
    if lefts:
        summary["min_seconds_left"] = round(min(lefts), 3)
    out = [Sample(schema.PORT_BUDGET_SUMMARY, dict(tags), summary, stamp)]
    for use in top_groups(result.groups, top):
        fields: dict[str, int | float] = {
            "used": use.used,
            "time_wait": use.time_wait,
            "capacity": result.capacity,
        }
        if result.capacity:
            fields["utilisation"] = round(use.utilisation(result.capacity), 6)
        if use.slope_per_s is not None:
            fields["slope_per_s"] = round(use.slope_per_s, 3)
        if use.seconds_left is not None:
            fields["seconds_left"] = round(use.seconds_left, 3)
        gtags = {
            **tags,
            "family": FAMILY_NAMES.get(use.family, str(use.family)),
            "src": use.src,
            "dst": use.dst,
            "dport": str(use.dport),
        }
        out.append(Sample(schema.PORT_BUDGET, gtags, fields, stamp))
    return out
