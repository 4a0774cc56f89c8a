"""Benchmark: the sock_diag census against ss, /proc/net/tcp and psutil, at scale.

    .venv/bin/python bench/sampling.py [--sizes 100000,250000] [--repeat 5] [--profile]
        [--budget-every 5]

For each size it builds a throw-away namespace holding that many TCP sockets, half
ESTABLISHED (client/server pairs over loopback, held by helper processes because
RLIMIT_NOFILE's hard limit may not be raisable here) and half TIME_WAIT (the client closes
first; timewait sockets hold no file descriptor), then times, median of ``--repeat``:

* the collector's full census: :class:`SocketCensus` (all states, derive mode) +
  :class:`PortBudget` (per-destination port budget), and its parts;
* ``ss -tan state time-wait | wc -l`` and ``ss -s`` (run inside the namespace, process
  start included, as a user would run them);
* Python parsing ``/proc/net/tcp`` and ``/proc/net/tcp6`` (state counts);
* ``psutil.net_connections('tcp')`` (in a helper process inside the namespace, timed
  in-process, so interpreter start and imports are not counted).

It prints the census / ss-time-wait ratio of one full sample (target at 250k: <= 0.25), and
the amortised cost of a tick when the port budget runs every ``--budget-every``-th tick
(``PortBudget(period=...)``, ``collectors_for(budget_period=...)``), and checks that memory
stays flat over repeated samples (tracemalloc and RSS). The sockets are made with the
tests' own helpers (``tests/sockets.py``). TIME_WAIT sockets live 60 s, so the
measurements of one size must finish within that; the population is verified at the end.
Everything is removed on exit (namespace, helper processes), also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psutil
from sockets import listener, make_time_wait, sockstat_tw  # test infrastructure, chaos-free

from chaos.collect.budget import FULL_HOLDING, PortBudget
from chaos.collect.census import RARE, SocketCensus, listening
from chaos.collect.zombies import scan
from chaos.kernel import netns
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.kernel.sockdiag import InetDiag

TW_PORTS = range(600, 608)  # server ports of the TIME_WAIT half, outside the ephemeral range
EST_PORT_BASE = 700  # one server port per helper process
SOURCES = [f"127.0.0.{i}" for i in range(1, 5)]

WORKER = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
pairs, port, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", port))
lsock.listen(4096)
held = []
done = 0
while done < pairs:
    batch = min(2000, pairs - done)
    clients = []
    for _ in range(batch):
        c = socket.socket()
        c.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
        c.bind((source, 0))
        c.connect(("127.0.0.1", port))
        clients.append(c)
    held.extend(clients)
    held.extend(lsock.accept()[0] for _ in range(batch))
    done += batch
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""

PSUTIL_PROBE = r"""
import time, psutil
t = time.perf_counter()
n = len(psutil.net_connections("tcp"))
print(time.perf_counter() - t, n)
"""


# --- population ------------------------------------------------------------------------------


class Population:
    """A namespace with ``size`` sockets: half ESTABLISHED, half TIME_WAIT."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.name = f"bench-{secrets.token_hex(3)}"
        self.workers: list[subprocess.Popen] = []
        self.tw_started = 0.0
        self.n_est = size // 2 // 2 * 2  # even: pairs
        self.n_tw = size - self.n_est

    def __enter__(self) -> Population:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        netns.create(self.name)
        with netns.ipr(self.name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for key, value in (
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_max_tw_buckets", str(4 * self.size)),
            ("net.ipv4.tcp_tw_reuse", "0"),  # loopback reuse would eat our TIME_WAITs
            ("net.core.somaxconn", "65535"),
        ):
            netns.sysctl_set(self.name, key, value)
        t0 = time.monotonic()
        self._established()
        t1 = time.monotonic()
        self._time_wait()
        t2 = time.monotonic()
        print(
            f"  built {self.n_est:,} ESTABLISHED in {t1 - t0:.1f}s "
            f"({len(self.workers)} helper processes), {self.n_tw:,} TIME_WAIT in {t2 - t1:.1f}s"
        )

    def _established(self) -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        per_worker = max(1000, min(9000, (hard - 500) // 2))
        pairs = self.n_est // 2
        index = 0
        while pairs > 0:
            count = min(per_worker, pairs)
            argv = [
                sys.executable,
                "-c",
                WORKER,
                str(count),
                str(EST_PORT_BASE + index),
                SOURCES[index % len(SOURCES)],
            ]
            proc = netns.popen(self.name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.workers.append(proc)
            pairs -= count
            index += 1
        for proc in self.workers:
            line = proc.stdout.readline() if proc.stdout else b""
            if line != b"ready\n":
                raise RuntimeError(f"helper process failed (exit {proc.poll()})")

    def _time_wait(self) -> None:
        def work() -> None:
            listeners = [listener(socket.AF_INET, "127.0.0.1", port) for port in TW_PORTS]
            per = -(-self.n_tw // len(listeners))  # ceil: the last listener gets the rest
            left = self.n_tw
            try:
                for index, lsock in enumerate(listeners):
                    count = min(per, left)
                    make_time_wait(lsock, count, source=SOURCES[index % len(SOURCES)])
                    left -= count
            finally:
                for lsock in listeners:
                    lsock.close()

        self.tw_started = time.monotonic()
        netns.run_in(self.name, work)

    def time_wait_now(self) -> int:
        return int(netns.run_in(self.name, sockstat_tw))

    def close(self) -> None:
        for proc in self.workers:
            if proc.stdin:
                proc.stdin.close()
        for proc in self.workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.workers = []
        netns.remove(self.name)


# --- the methods -----------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    times = []
    result: object = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times), result


def in_netns_shell(name: str, command: str) -> Callable[[], str]:
    def run() -> str:
        proc = netns.popen(
            name, ["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        out, _ = proc.communicate(timeout=120)
        return out.decode().strip()

    return run


def parse_proc_tcp() -> dict[str, int]:
    """What a /proc parser does: every line split, the state column counted."""
    counts: dict[str, int] = {}
    for path in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):
        with open(path) as fh:
            next(fh)
            for line in fh:
                state = line.split()[3]
                counts[state] = counts.get(state, 0) + 1
    return counts


def psutil_probe(name: str) -> Callable[[], float]:
    def run() -> float:
        proc = netns.popen(
            name, [sys.executable, "-c", PSUTIL_PROBE], stdout=subprocess.PIPE, text=True
        )
        out, _ = proc.communicate(timeout=300)
        return float(out.split()[0]) * 1000

    return run


def bench_size(size: int, repeat: int, profile: bool, every: int) -> dict[str, float]:
    print(f"\n== {size:,} sockets ==")
    with Population(size) as pop:
        ns = NetnsRef.named(pop.name)
        census = SocketCensus(ns, mode="derive")
        exact = SocketCensus(ns, mode="exact")
        budget = PortBudget(ns)
        diag = InetDiag.open_in(ns)
        try:
            check = census.take()
            groups = budget.take()
            print(
                f"  census sees ESTABLISHED {check.states['established']:,}, TIME_WAIT "
                f"{check.states['time_wait']:,}; budget: {sum(groups.outbound.values()):,} "
                f"outbound sockets in {len(groups.groups)} groups, busiest "
                f"{groups.groups[0].used:,}/{groups.capacity:,}"
            )

            def full() -> None:
                census.take()
                budget.take()

            rows: dict[str, tuple[float, float]] = {}
            cpu0 = time.process_time()
            rows["census: states + port budget"] = median_ms(full, repeat)[:2]
            cpu_full = (time.process_time() - cpu0) * 1000 / repeat
            rows["  states only (derive: 1 walk)"] = median_ms(census.take, repeat)[:2]
            rows["  port budget only (2 walks)"] = median_ms(budget.take, repeat)[:2]
            rows["  states, exact mode (3 walks)"] = median_ms(exact.take, repeat)[:2]
            requests = floor_requests(diag, budget)
            rows["  kernel floor: the same dumps, records unread"] = median_ms(
                lambda: read_unparsed(diag, requests), repeat
            )[:2]
            rows["  zombie scan (tcp_info of all ESTABLISHED)"] = median_ms(
                lambda: scan(diag, 60.0), max(3, repeat // 2)
            )[:2]
            ss_tw, ss_tw_min, out = median_ms(
                in_netns_shell(pop.name, "ss -tan state time-wait | wc -l"), repeat
            )
            rows["ss -tan state time-wait | wc -l"] = (ss_tw, ss_tw_min)
            rows["ss -s"] = median_ms(in_netns_shell(pop.name, "ss -s"), repeat)[:2]
            rows["python parsing /proc/net/tcp{,6}"] = median_ms(
                lambda: netns.run_in(pop.name, parse_proc_tcp), repeat
            )[:2]
            ps = [psutil_probe(pop.name)() for _ in range(3)]
            rows["psutil.net_connections('tcp')"] = (statistics.median(ps), min(ps))

            print(f"  {'method':46} {'median ms':>10} {'min ms':>9} {'x ss-tw':>8}")
            for label, (med, low) in rows.items():
                print(f"  {label:46} {med:10.1f} {low:9.1f} {med / ss_tw:8.2f}")
            print(f"  (ss -tan state time-wait printed {int(out or 0) - 1:,} sockets)")
            full_ms = rows["census: states + port budget"][0]
            states_ms = rows["  states only (derive: 1 walk)"][0]
            budget_ms = rows["  port budget only (2 walks)"][0]
            # the sampler runs the budget every `every`-th tick (PortBudget period), the
            # states every tick: what one tick costs on average
            amortised = states_ms + budget_ms / every
            ratio, ratio_amortised = full_ms / ss_tw, amortised / ss_tw
            print(f"  census vs `ss -tan state time-wait | wc -l` ({ss_tw:.1f} ms), same run:")
            print(
                f"    full census (states + port budget), one sample: {full_ms:7.1f} ms = "
                f"{ratio:.2f}x ss (target at 250k: <= 0.25); CPU {cpu_full:.1f} ms"
            )
            for n in sorted({every, 2 * every}):
                print(
                    f"    port budget every {n}th tick (period {n} s at 1 s): "
                    f"{states_ms + budget_ms / n:7.1f} ms per tick = "
                    f"{(states_ms + budget_ms / n) / ss_tw:.2f}x ss"
                )
            last = census.take().costs_ms
            parts = budget.take().costs_ms
            print(
                "  where a sample goes (ms): states "
                + ", ".join(f"{k} {v:.1f}" for k, v in last.items())
                + "; budget "
                + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
            )

            # memory: the same walks with the forecast history off (it keeps up to 64 points
            # per group by design), so any growth left would be a leak
            lean = PortBudget(ns, history_s=0.0)
            try:
                memory_flat(lambda: (census.take(), lean.take()))
            finally:
                lean.close()
            points = sum(len(h) for h in budget._history.values())
            print(f"  forecast history kept: {points} points in {len(budget._history)} groups")
            if profile:
                profile_once(full)
            left = pop.time_wait_now()
            age = time.monotonic() - pop.tw_started
            print(
                f"  population at the end: {left:,} TIME_WAIT of {pop.n_tw:,} "
                f"({age:.0f}s after they were made)"
            )
            return {
                "ss_ms": ss_tw,
                "full_ms": full_ms,
                "ratio": ratio,
                "amortised_ms": amortised,
                "ratio_amortised": ratio_amortised,
            }
        finally:
            diag.close()
            census.close()
            exact.close()
            budget.close()
            ns.close()


FloorRequest = tuple[int, int, bytes]  # states mask, extensions, bytecode


def floor_requests(diag: InetDiag, budget: PortBudget) -> list[FloorRequest]:
    """The requests one full sample sends: census (listeners, the rare states with tcp_info)
    and budget (listeners, outbound TIME_WAIT, outbound other states)."""
    lo, hi = budget.take().port_range
    bytecode = sd.outbound_filter(lo, hi, sorted(p for p in listening(diag) if lo <= p <= hi))
    listen = (sd.states_mask([sd.LISTEN]), 0, b"")
    return [
        listen,
        (sd.states_mask(RARE), sd.EXT_INFO, b""),
        listen,
        (sd.states_mask([sd.TIME_WAIT]), 0, bytecode),
        (sd.states_mask(FULL_HOLDING), 0, bytecode),
    ]


def read_unparsed(diag: InetDiag, requests: list[FloorRequest]) -> int:
    """Send the requests and receive every record without looking at it: what the kernel and
    the copies to user space alone cost, the floor under any digestion in Python."""
    records = 0
    for states, ext, code in requests:
        for run in diag.dump(sd.AF_ANY, states, ext=ext, bytecode=code):
            records += run.count
    return records


def memory_flat(full: Callable[[], object], rounds: int = 15) -> None:
    """Traced Python memory and RSS across repeated samples, after a warm-up."""
    for _ in range(3):
        full()
    gc.collect()
    tracemalloc.start()
    full()
    gc.collect()
    base, _ = tracemalloc.get_traced_memory()
    rss0 = psutil.Process().memory_info().rss
    for _ in range(rounds):
        full()
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = psutil.Process().memory_info().rss
    # flat: what a sample allocates is freed (a few KiB of interning and caches may stay)
    flat = after - base < 64 * 1024 and rss1 - rss0 < 2 * 1024 * 1024
    print(
        f"  memory over {rounds} more samples: traced {base / 1024:.0f} -> {after / 1024:.0f} KiB "
        f"(peak {peak / 1024 / 1024:.1f} MiB during a sample), "
        f"RSS {rss0 / 1024 / 1024:.1f} -> {rss1 / 1024 / 1024:.1f} MiB: "
        + ("flat" if flat else "GROWING")
    )


def profile_once(full: Callable[[], None]) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3):
        full()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
    print("  cProfile, 3 samples, by own time:")
    for line in out.getvalue().splitlines():
        if line.strip() and not line.startswith(("   Ordered", "         ")):
            print("   ", line[:140])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,250000", help="comma-separated socket counts")
    parser.add_argument("--repeat", type=int, default=5, help="runs per method (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile the census")
    parser.add_argument(
        "--budget-every", type=int, default=5, help="ticks per port budget, for the amortised cost"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 3
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"threads {threading.active_count()}"
    )
    results = {s: bench_size(s, args.repeat, args.profile, args.budget_every) for s in sizes}
    head = ("sockets", "ss-tw ms", "full ms", "x ss", "amortised ms", "x ss")
    print("\n{:>9} {:>9} {:>8} {:>6} {:>13} {:>6}".format(*head))
    for size, r in results.items():
        print(
            f"{size:9,} {r['ss_ms']:9.1f} {r['full_ms']:8.1f} {r['ratio']:6.2f} "
            f"{r['amortised_ms']:13.1f} {r['ratio_amortised']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
