"""A small real lab for fault tests: a client and an origin namespace on one veth, the
project's origin server (2 forked workers) in the origin namespace, and helpers to look at
the kernel from inside a namespace. Everything it makes, it removes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chaos.kernel import netns, processes
from chaos.lab.topology import LabState

CLIENT_IP = "198.18.1.10"
ORIGIN_IP = "198.18.1.2"
ORIGIN_PORT = 8080
NFT = shutil.which("nft") or "/usr/sbin/nft"


@dataclass
class MiniLab:
    state: LabState
    client: str
    origin: str
    origin_pids: list[int]


def _veth(client: str, origin: str) -> None:
    with netns.ipr(client) as ipr:
        ipr.link(
            "add",
            ifname="eth0",
            kind="veth",
            peer={"ifname": "eth0", "net_ns_fd": netns.path_of(origin)},
        )
    for ns, address in ((client, CLIENT_IP), (origin, ORIGIN_IP)):
        with netns.ipr(ns) as ipr:
            for name in ("lo", "eth0"):
                index = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=index, state="up")
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=address, prefixlen=24)


@contextlib.contextmanager
def mini_lab(name: str, log_dir: Path) -> Iterator[MiniLab]:
    client, origin = f"chaos-{name}-client", f"chaos-{name}-origin"
    records: list[processes.ProcessRecord] = []
    try:
        netns.create(client)
        netns.create(origin)
        _veth(client, origin)
        config = {"host": ORIGIN_IP, "port": ORIGIN_PORT, "workers": 2, "backlog": 8}
        argv = [sys.executable, "-m", "chaos.lab.origin", "--config-json", json.dumps(config)]
        proc, record = processes.spawn("origin", "origin", origin, argv, log_dir / "origin.log")
        records.append(record)
        processes.wait_listening(proc, record, ORIGIN_IP, ORIGIN_PORT)
        state = LabState(
            name=name,
            namespaces={"client": client, "origin": origin},
            processes=records,
            origin={"host": ORIGIN_IP, "port": ORIGIN_PORT},
        )
        workers = wait_children(record.pid, 2)
        yield MiniLab(state, client, origin, [record.pid, *workers])
    finally:
        for record in records:
            processes.terminate(record)
        for ns in (client, origin):
            for pid in netns.pids_in(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            netns.remove(ns)


def wait_children(pid: int, count: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [int(c) for c in _children(pid)]
        if len(children) >= count:
            return children
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not start {count} workers")


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@contextlib.contextmanager
def lone_namespace(lab_name: str) -> Iterator[str]:
    """``chaos-LAB-client`` alone, for faults on a namespace and its processes; afterwards
    whatever runs inside is continued and killed, and the namespace removed."""
    name = f"chaos-{lab_name}-client"
    netns.create(name)
    try:
        yield name
    finally:
        for pid in netns.pids_in(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        netns.remove(name)


def spawn_sleeper(namespace: str) -> subprocess.Popen:
    """A dummy process in ``namespace`` (the caller waits for or kills it)."""
    return netns.popen(namespace, ["sleep", "120"], stdin=subprocess.DEVNULL)


def nft_ruleset(namespace: str) -> str:
    proc = netns.popen(namespace, [NFT, "list", "ruleset"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    return out


def http_get(
    namespace: str, host: str = ORIGIN_IP, port: int = ORIGIN_PORT, timeout: float = 2
) -> str:
    """ "ok" for a complete HTTP response, else the failure (timeout, ECONNREFUSED, ...)."""

    def attempt() -> str:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return "ok" if data.startswith(b"HTTP/1.1 200") else f"bad response {data[:40]!r}"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))

    return netns.run_in(namespace, attempt)


def tcp_counters(namespace: str) -> dict[str, int]:
    """The Tcp: line of /proc/net/snmp, inside ``namespace``."""

    def read() -> dict[str, int]:
        text = Path("/proc/thread-self/net/snmp").read_text()
        lines = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
        return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}

    return netns.run_in(namespace, read)


@contextlib.contextmanager
def sink_server(namespace: str, address: str, port: int) -> Iterator[None]:
    """A listener in ``namespace`` that reads and discards everything (its socket belongs to
    the namespace it was created in; the thread that serves it does not need to be there)."""
    listener = netns.run_in(namespace, socket.socket)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30)
                with contextlib.suppress(OSError):
                    while conn.recv(65536):
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=35)
        listener.close()


def send_bytes(namespace: str, address: str, port: int, total: int, timeout: float = 30) -> None:
    def send() -> None:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(b"x" * total)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)  # wait for the peer's FIN: everything was delivered

    netns.run_in(namespace, send)


@contextlib.contextmanager
def tcpdump(namespace: str, pcap: Path, port: int) -> Iterator[None]:
    """tcpdump on the namespace's one link (``eth0``: ``-i any`` was seen to miss a whole
    connection now and then), TCP port ``port``, into ``pcap``; stopped half a second after
    the block, once the last segments reached it."""
    proc = netns.popen(
        namespace,
        ["tcpdump", "-i", "eth0", "-nn", "-U", "--immediate-mode", "-w", str(pcap),
         f"tcp port {port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on eth0 ...": capturing from here on
        yield
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
