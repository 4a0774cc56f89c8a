"""Apply and revert latency per fault type (median and p99), in a throw-away namespace.

    sudo .venv/bin/python bench/faults.py [--rounds 50]

``apply`` is ``Fault.apply(handle)``, ``revert`` is ``Fault.revert(handle)``: what a fault
costs the kernel and the controller. ``guard`` adds what :class:`FaultGuard` adds around
each (prepare, the fsync'd ledger write and removal, the journal event), measured for the
sysctl fault. Types whose kernel feature is missing here (netem) are listed as skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chaos import capabilities
from chaos.errors import ChaosError
from chaos.faults.base import Fault, Target
from chaos.faults.engine.guard import FaultGuard
from chaos.faults.engine.ledger import Ledger
from chaos.faults.registry import fault_type, fault_types
from chaos.kernel import netns

PARAMS: dict[str, dict] = {
    "nft-filter": {"tcp_flags": "ack,fin ack", "action": "reject", "dport": 8080},
    "nft-loss": {"probability": 30, "direction": ["input", "output"]},
    "stop": {},
    "kill": {},
    "sysctl": {"values": {"net.ipv4.tcp_fin_timeout": 7, "net.ipv4.tcp_rmem": [4096, 8192, 16384]}},
}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def row(label: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"{label:<22} {statistics.median(ms):>9.2f} {percentile(ms, 99):>9.2f} "
        f"{max(ms):>9.2f} {len(ms):>6}"
    )


def bench_kind(kind: str, namespace: str, rounds: int) -> tuple[list[float], list[float]]:
    cls = fault_type(kind)
    apply_s: list[float] = []
    revert_s: list[float] = []
    sleeper: subprocess.Popen | None = None
    for _ in range(rounds):
        pids: tuple[int, ...] = ()
        if kind in ("stop", "kill"):
            if sleeper is None or sleeper.poll() is not None:
                sleeper = netns.popen(namespace, ["sleep", "600"])
            pids = (sleeper.pid,)
        fault: Fault = cls.validate(Target("bench", namespace, ("lo",), pids), PARAMS[kind])
        handle = fault.prepare()
        start = time.perf_counter()
        fault.apply(handle)
        middle = time.perf_counter()
        cls.revert(handle)
        apply_s.append(middle - start)
        revert_s.append(time.perf_counter() - middle)
        if kind == "kill" and sleeper is not None:
            sleeper.wait()
    if sleeper is not None and sleeper.poll() is None:
        sleeper.kill()
        sleeper.wait()
    return apply_s, revert_s


def bench_guard(namespace: str, rounds: int) -> tuple[list[float], list[float]]:
    cls = fault_type("sysctl")
    target = Target("bench", namespace)
    apply_s: list[float] = []
    revert_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        guard = FaultGuard(ledger=Ledger(Path(tmp)))
        for _ in range(rounds):
            fault = cls.validate(target, PARAMS["sysctl"])
            start = time.perf_counter()
            handle = guard.apply(fault)
            middle = time.perf_counter()
            guard.revert(handle)
            apply_s.append(middle - start)
            revert_s.append(time.perf_counter() - middle)
    return apply_s, revert_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces, nftables)", file=sys.stderr)
        return 3
    namespace = f"chaos-bench{os.getpid()}-faults"
    netns.create(namespace)
    try:
        print(f"{'fault':<22} {'median ms':>9} {'p99 ms':>9} {'max ms':>9} {'rounds':>6}")
        types = fault_types()
        for kind in sorted(types):
            if kind not in PARAMS:
                try:
                    capabilities.require(set(types[kind].features))
                    print(f"{kind:<22} (no benchmark params for this type)")
                except ChaosError as exc:
                    print(f"{kind:<22} skipped: {exc.message}")
                continue
            apply_s, revert_s = bench_kind(kind, namespace, args.rounds)
            print(row(f"{kind} apply", apply_s))
            print(row(f"{kind} revert", revert_s))
        apply_s, revert_s = bench_guard(namespace, args.rounds)
        print(row("guard+sysctl apply", apply_s))
        print(row("guard+sysctl revert", revert_s))
    finally:
        for pid in netns.pids_in(namespace):
            os.kill(pid, 9)
        netns.remove(namespace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
