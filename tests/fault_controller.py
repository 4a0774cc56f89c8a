"""A fault controller to be killed: applies an nft filter, a sysctl window and a SIGSTOP
through a FaultGuard, prints ``applied`` and blocks. Used by the crash tests as::

    python tests/fault_controller.py CLIENT_NS PID_TO_STOP

The ledger directory comes from CHAOS_LEDGER_DIR.
"""

from __future__ import annotations

import sys
import time

from chaos.endings import Terminated, exit_code_of
from chaos.faults.base import Target
from chaos.faults.engine.guard import FaultGuard
from chaos.faults.registry import fault_type


def main(namespace: str, pid: int) -> None:
    client = Target("client", namespace, ("eth0",))
    with FaultGuard() as guard:
        guard.apply(fault_type("nft-filter").validate(client, {"tcp_flags": "syn"}))
        guard.apply(
            fault_type("sysctl").validate(client, {"values": {"net.ipv4.tcp_fin_timeout": 11}})
        )
        guard.apply(fault_type("stop").validate(Target(f"pid:{pid}", namespace, (), (pid,)), {}))
        print("applied", flush=True)
        time.sleep(120)


if __name__ == "__main__":
    try:
        main(sys.argv[1], int(sys.argv[2]))
    except (KeyboardInterrupt, Terminated) as ended:  # the guard reverted on its way out
        sys.exit(exit_code_of(ended))
