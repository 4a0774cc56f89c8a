"""netem apply and revert latency (median and p99), for each layout the fault builds.

    sudo .venv/bin/python bench/faults_netem.py [--rounds 30]

The other fault types are in ``bench/faults.py``; this one is separate because netem needs a
kernel with sch_netem. On a host that has it, the bench runs here, in a throw-away namespace.
On a host without it (like the project's machines) it boots the test VM
(``tests/vm/qemu.py``: Debian's stock kernel under QEMU TCG) and runs itself there; those
figures are for an emulated CPU, roughly 25-40x slower than the host, so read them as an
upper bound and as relative costs (egress vs scoped vs ingress), not as host latencies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

from faults import row  # bench/faults.py: the same table format and percentiles

from chaos import capabilities
from chaos.errors import ChaosError
from chaos.faults.base import Target
from chaos.faults.netem import Netem
from chaos.kernel import netns

REPO = Path(__file__).resolve().parent.parent
LAYOUTS = {
    "egress": {"delay_ms": 100, "jitter_ms": 10, "loss": 1},
    "egress-scoped": {"delay_ms": 100, "scope": {"address": "198.18.0.2", "port": 8080}},
    "ingress": {"delay_ms": 100, "direction": "ingress"},
    "ingress-scoped": {"delay_ms": 100, "direction": "ingress", "scope": {"port": 8080}},
}


def bench_here(rounds: int) -> None:
    namespace = f"chaos-bench-{uuid.uuid4().hex[:8]}"
    netns.create(namespace)
    try:
        with netns.ipr(namespace) as ipr:
            ipr.link("add", ifname="veth0", kind="veth", peer={"ifname": "veth1"})
            for name in ("veth0", "veth1"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        target = Target("bench", namespace, ("veth0",))
        print(f"{'netem layout':<22} {'median ms':>9} {'p99 ms':>9} {'max ms':>9} {'rounds':>6}")
        for layout, params in LAYOUTS.items():
            fault = Netem.validate(target, params)
            applies, reverts = [], []
            for _ in range(rounds):
                handle = fault.prepare()
                started = time.perf_counter()
                fault.apply(handle)
                applies.append(time.perf_counter() - started)
                started = time.perf_counter()
                Netem.revert(handle)
                reverts.append(time.perf_counter() - started)
            print(row(f"{layout} apply", applies))
            print(row(f"{layout} revert", reverts))
    finally:
        netns.remove(namespace)


def bench_in_vm(rounds: int) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from vm import qemu

    try:
        result, _ = qemu.run(
            f"{qemu.python()} bench/faults_netem.py --here --rounds {rounds}", timeout=280
        )
    except qemu.VMUnavailable as exc:
        print(f"skipped: this kernel has no sch_netem and the VM cannot run: {exc}")
        return 4
    print("measured in the QEMU TCG guest (emulated CPU, ~25-40x slower than this host):")
    sys.stdout.write(result.stdout)
    if result.rc != 0:
        print(result.describe(), file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--here", action="store_true", help="run on this kernel, no VM")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces)", file=sys.stderr)
        return 3
    if args.here or os.environ.get("CHAOS_IN_VM"):
        bench_here(args.rounds)
        return 0
    try:
        capabilities.require({"netem"})
    except ChaosError as exc:
        print(f"this kernel has no netem ({exc}); running in the VM")
        return bench_in_vm(args.rounds)
    bench_here(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
