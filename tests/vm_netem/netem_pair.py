"""Two namespaces joined by one veth, for the netem guest tests (a module of its own, not
conftest: ``import conftest`` is ambiguous when tests/conftest.py is loaded too)."""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass

from chaos.faults.base import Target
from chaos.kernel import netns

A_IP, B_IP = "198.18.0.1", "198.18.0.2"  # RFC 2544 benchmarking range, lab only
PORT, OTHER_PORT, BULK_PORT = 8080, 8081, 9000


@dataclass
class Pair:
    """Two namespaces joined by one veth: ``a`` (the fault's target) and ``b`` (the peer)."""

    a: str
    b: str
    link: str = "veth0"

    def target(self) -> Target:
        return Target("a", self.a, (self.link,))

    def connect_ms(self, port: int = PORT, count: int = 5) -> float:
        """Median TCP connect time from a to b, in ms (the socket is made in a's namespace
        and connected from this thread: only the connect is timed)."""
        times = []
        for _ in range(count):
            sock = netns.run_in(self.a, socket.socket)
            sock.settimeout(10)
            with sock:
                started = time.monotonic()
                sock.connect((B_IP, port))
                times.append((time.monotonic() - started) * 1000)
        return statistics.median(times)
