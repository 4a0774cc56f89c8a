"""Real TCP sockets in known states, for the collector tests and ``bench/sampling.py``.

Test infrastructure, independent of ``chaos``: every function works in the calling thread's
network namespace (run it through ``chaos.kernel.netns.run_in`` to aim at a lab namespace), and
the caller owns (and closes) the sockets it gets back.
"""

from __future__ import annotations

import socket

IP_BIND_ADDRESS_NO_PORT = 24  # bind() an address now, the port at connect() (per 4-tuple)


def listener(family: int, host: str, port: int = 0, backlog: int = 4096) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def connect_pairs(
    lsock: socket.socket,
    n: int,
    *,
    source: str | None = None,
    keepalive: bool = False,
) -> list[tuple[socket.socket, socket.socket]]:
    """n ESTABLISHED (client, accepted server) pairs to ``lsock``.

    With ``source``, clients bind that address with IP_BIND_ADDRESS_NO_PORT, so the
    ephemeral ports are shared per destination as in a real client (more than 64k sockets
    fit, one range per source and destination).
    """
    family = lsock.family
    addr = lsock.getsockname()[:2]
    pairs = []
    for _ in range(n):
        client = socket.socket(family, socket.SOCK_STREAM)
        if keepalive:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if source:
            client.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            client.bind((source, 0))
        client.connect(addr)
        server, _ = lsock.accept()
        if keepalive:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        pairs.append((client, server))
    return pairs


def make_time_wait(lsock: socket.socket, n: int, *, source: str | None = None) -> None:
    """n TIME_WAIT sockets on the client side: the client closes first (active closer).

    Timewait sockets hold no file descriptor, so nothing is returned or left open, and one
    pair at a time is open (n may be far above RLIMIT_NOFILE).
    """
    for _ in range(n):
        [(client, server)] = connect_pairs(lsock, 1, source=source)
        client.close()
        server.close()


def sockstat_tw() -> int:
    """The kernel's own count of timewait sockets (``tw`` in sockstat) in this namespace."""
    with open("/proc/thread-self/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("tw") + 1])
    return -1
