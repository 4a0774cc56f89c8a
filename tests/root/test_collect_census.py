"""Collectors against real sockets in throw-away namespaces (root).

Every namespace is named ``ctest-<session token><random>-<n>`` and removed by the fixture, whatever
happens; sockets live in this process (made from threads inside the namespaces) and are
closed by the fixture, and the timewait sockets die with their namespace.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sockets
from container_cli import docker_stand_in
from session_token import TOKEN
from sockets import listener

from chaos.collect import collectors_for
from chaos.collect.budget import PortBudget
from chaos.collect.census import SocketCensus
from chaos.collect.cli import collect_main
from chaos.collect.conntrack import Conntrack
from chaos.collect.kernel import KernelCounters
from chaos.collect.sampler import Sampler
from chaos.collect.zombies import ZombieScan, confirm_zombies, scan, socket_tuples
from chaos.kernel import netns
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.record.point import to_lines

pytestmark = pytest.mark.root

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


class Lab:
    """Namespaces and sockets of one test; everything is undone by :meth:`cleanup`."""

    def __init__(self) -> None:
        self.prefix = f"ctest-{TOKEN}{secrets.token_hex(3)}-"
        self.names: list[str] = []
        self.sockets: list[socket.socket] = []
        self.refs: list[NetnsRef] = []
        self.closers: list[Callable[[], None]] = []

    def namespace(self, **sysctls: str) -> str:
        name = f"{self.prefix}{len(self.names)}"
        netns.create(name)
        self.names.append(name)
        with netns.ipr(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        # no TIME_WAIT reuse on loopback: counts must stay exactly what the test made
        netns.sysctl_set(name, "net.ipv4.tcp_tw_reuse", "0")
        for key, value in sysctls.items():
            netns.sysctl_set(name, "net.ipv4." + key, value)
        return name

    def ref(self, name: str) -> NetnsRef:
        ref = NetnsRef.named(name)
        self.refs.append(ref)
        return ref

    def keep(self, collector: object) -> object:
        self.closers.append(collector.close)  # type: ignore[attr-defined]
        return collector

    def run(self, name: str, fn: Callable[..., object], *args: object) -> object:
        return netns.run_in(name, fn, *args)

    def cleanup(self) -> None:
        for close in self.closers:
            close()
        for sock in self.sockets:
            sock.close()
        for ref in self.refs:
            ref.close()
        for name in self.names:
            netns.remove(name)


@pytest.fixture
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.cleanup()
    assert not any(n.startswith(made.prefix) for n in netns.list_namespaces())


def connect_pairs(
    lab: Lab, lsock: socket.socket, n: int, **options: object
) -> list[tuple[socket.socket, socket.socket]]:
    """n ESTABLISHED client/server pairs to ``lsock`` (call inside the namespace), kept
    open until the test's cleanup."""
    pairs = sockets.connect_pairs(lsock, n, **options)  # type: ignore[arg-type]
    lab.sockets += [sock for pair in pairs for sock in pair]
    return pairs


def make_time_wait(lab: Lab, lsock: socket.socket, n: int) -> None:
    """n TIME_WAIT sockets on the client side (call inside the namespace)."""
    sockets.make_time_wait(lsock, n)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def sockstat_tw(name: str) -> int:
    return int(netns.run_in(name, sockets.sockstat_tw))


# --- census ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_census_counts_exactly_n_time_wait_and_established(lab, family):
    n_tw, n_pairs = 37, 23
    name = lab.namespace()

    def build() -> socket.socket:
        lsock = listener(family, LOOPBACK[family])
        lab.sockets.append(lsock)
        make_time_wait(lab, lsock, n_tw)
        connect_pairs(lab, lsock, n_pairs)
        return lsock

    lsock = lab.run(name, build)
    port = lsock.getsockname()[1]
    wait_for(lambda: sockstat_tw(name) == n_tw)
    ns = lab.ref(name)
    fam = "ipv4" if family == socket.AF_INET else "ipv6"
    other = "ipv6" if fam == "ipv4" else "ipv4"

    for mode in ("exact", "derive"):
        census = lab.keep(SocketCensus(ns, mode=mode))
        result = census.take()
        assert result.mode == mode
        assert result.states["time_wait"] == n_tw, mode
        assert result.states["established"] == 2 * n_pairs, mode
        assert result.states["listen"] == 1
        assert result.total == n_tw + 2 * n_pairs + 1
        assert all(result.states[s] == 0 for s in ("close_wait", "fin_wait2", "syn_recv"))
    exact = SocketCensus(ns, mode="exact")
    lab.keep(exact)
    by_family = exact.take().by_family
    assert by_family[fam]["time_wait"] == n_tw
    assert by_family[fam]["established"] == 2 * n_pairs
    assert other not in by_family

    # the port budget: the clients' sockets (TIME_WAIT + ESTABLISHED) hold ports towards
    # the listener; the accepted ends carry the listener's port and do not count
    budget = lab.keep(PortBudget(ns))
    result = budget.take()
    group = result.group(LOOPBACK[family], LOOPBACK[family], port)
    assert group is not None
    assert (group.used, group.time_wait) == (n_tw + n_pairs, n_tw)
    assert result.outbound == {"time_wait": n_tw, "established": n_pairs}
    assert len(result.groups) == 1
    assert port in result.listen_ports


def test_census_can_leave_the_load_generators_loopback_sockets_out(lab):
    """Locust's master and workers talk over 127.0.0.1 in the client namespace: the client
    role's census leaves those out (``loopback`` counts them), in both modes."""
    name = lab.namespace()
    lab_address = "198.18.77.1"
    with netns.ipr(name) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=lab_address, prefixlen=32)

    def build() -> None:
        for address, pairs, tw in (("127.0.0.1", 5, 3), (lab_address, 7, 4)):
            lsock = listener(socket.AF_INET, address)
            lab.sockets.append(lsock)
            make_time_wait(lab, lsock, tw)
            connect_pairs(lab, lsock, pairs)

    lab.run(name, build)
    wait_for(lambda: sockstat_tw(name) == 7)
    ns = lab.ref(name)
    for mode in ("exact", "derive"):
        every = lab.keep(SocketCensus(ns, mode=mode)).take()  # type: ignore[attr-defined]
        assert (every.states["established"], every.states["time_wait"]) == (24, 7)
        assert every.loopback is None
        census = lab.keep(SocketCensus(ns, mode=mode, exclude_loopback=True))
        result = census.take()  # type: ignore[attr-defined]
        assert result.states["established"] == 14, mode
        assert result.states["time_wait"] == 4, mode
        assert result.loopback == 13, mode
        [states] = [s for s in census.sample(time.time()) if s.tags.get("family") == "all"]  # type: ignore[attr-defined]
        assert states.fields["loopback"] == 13


def test_port_budget_utilisation_and_forecast_in_a_tiny_range(lab):
    name = lab.namespace(ip_local_port_range="40000 40009", ip_local_reserved_ports="40009")
    ns = lab.ref(name)

    def build() -> socket.socket:
        # the listener's port is inside the range: its accepted sockets are inbound
        lsock = listener(socket.AF_INET, "127.0.0.1", 40005)
        lab.sockets.append(lsock)
        make_time_wait(lab, lsock, 2)
        return lsock

    lsock = lab.run(name, build)
    wait_for(lambda: sockstat_tw(name) == 2)
    budget = lab.keep(PortBudget(ns, history_s=60))
    first = budget.take(now=1000.0)
    assert first.capacity == 9  # 10 ports, one reserved
    assert first.port_range == (40000, 40009)
    group = first.group("127.0.0.1", "127.0.0.1", 40005)
    assert group is not None and group.used == 2 and group.seconds_left is None

    lab.run(name, lambda: (make_time_wait(lab, lsock, 2), connect_pairs(lab, lsock, 2)))
    wait_for(lambda: sockstat_tw(name) == 4)
    second = budget.take(now=1002.0)
    group = second.group("127.0.0.1", "127.0.0.1", 40005)
    assert group is not None
    assert (group.used, group.time_wait) == (6, 4)
    assert group.utilisation(second.capacity) == pytest.approx(6 / 9)
    assert group.slope_per_s == pytest.approx(2.0)  # 2 -> 6 ports in 2 s
    assert group.seconds_left == pytest.approx(1.5)  # 3 ports left at 2 per second

    samples = budget.sample(time.time())
    summary = next(s for s in samples if s.measurement == "port_budget_summary")
    assert summary.fields["max_used"] == 6 and summary.fields["capacity"] == 9
    point = next(s for s in samples if s.measurement == "port_budget")
    assert point.tags["dport"] == "40005" and point.tags["dst"] == "127.0.0.1"
    assert point.fields["utilisation"] == pytest.approx(6 / 9, abs=1e-5)


def test_teardown_states_ages_and_derived_time_wait(lab):
    name = lab.namespace(tcp_fin_timeout="30")
    ns = lab.ref(name)

    def build() -> None:
        lsock = listener(socket.AF_INET, "127.0.0.1")
        lab.sockets.append(lsock)
        make_time_wait(lab, lsock, 5)
        # 3 pairs whose client closed: client orphaned in FIN_WAIT2 (kept as a timewait
        # socket), server in CLOSE_WAIT because its application never closes
        for client, _server in connect_pairs(lab, lsock, 3):
            client.close()
        # 2 pairs half-closed with shutdown: FIN_WAIT2 still owned by the client
        for client, _server in connect_pairs(lab, lsock, 2):
            client.shutdown(socket.SHUT_WR)

    lab.run(name, build)
    census = lab.keep(SocketCensus(ns, mode="derive"))
    wait_for(lambda: census.take().states["close_wait"] == 5)
    time.sleep(0.4)
    result = census.take()
    assert result.states["close_wait"] == 5
    assert result.states["fin_wait2"] == 5
    # sockstat's tw counts the 3 orphaned FIN_WAIT2 too; the census takes them out
    assert sockstat_tw(name) == 8 and result.states["time_wait"] == 5
    assert result.states["established"] == 0  # CurrEstab minus CLOSE_WAIT
    ages = result.teardown
    assert ages["close_wait"].count == 5 and ages["close_wait"].oldest_s >= 0.3
    assert ages["fin_wait2"].count == 5 and 0.3 <= ages["fin_wait2"].oldest_s < 30
    assert result.orphans == 0  # the orphaned FIN_WAIT2 are timewait sockets, not full ones
    teardown = next(s for s in census.sample(time.time()) if s.measurement == "tcp_teardown")
    assert teardown.fields["close_wait"] == 5 and teardown.fields["close_wait_oldest_s"] >= 0.3


# --- zombies ---------------------------------------------------------------------------------


def test_zombie_candidates_need_silence_and_no_keepalive(lab):
    name = lab.namespace()
    ns = lab.ref(name)

    def build() -> tuple[list, list]:
        lsock = listener(socket.AF_INET, "127.0.0.1")
        lab.sockets.append(lsock)
        silent = connect_pairs(lab, lsock, 2)
        connect_pairs(lab, lsock, 2, keepalive=True)
        chatty = connect_pairs(lab, lsock, 1)
        return silent, chatty

    silent, chatty = lab.run(name, build)
    time.sleep(0.8)
    client, server = chatty[0]
    client.sendall(b"ping")
    server.recv(4)
    server.sendall(b"pong")
    client.recv(4)

    diag = sd.InetDiag.open_in(ns)
    try:
        report = scan(diag, 0.5, name)
    finally:
        diag.close()
    assert report.established == 10
    assert report.keepalive == 4
    found = {(c.sport, c.dport) for c in report.candidates}
    expected = set()
    for c_sock, s_sock in silent:
        expected.add(c_sock.getsockname()[1:2] + s_sock.getsockname()[1:2])
        expected.add(s_sock.getsockname()[1:2] + c_sock.getsockname()[1:2])
    assert found == expected
    assert all(c.idle_s >= 0.5 for c in report.candidates)


def _veth_pair(lab: Lab, a: str, b: str) -> None:
    with netns.ipr(a) as ipr:
        ipr.link("add", ifname="za", kind="veth", peer={"ifname": "zb"})
        ipr.link("set", index=ipr.link_lookup(ifname="zb")[0], net_ns_fd=netns.path_of(b))
        idx = ipr.link_lookup(ifname="za")[0]
        ipr.addr("add", index=idx, address="198.18.0.1", prefixlen=24)
        ipr.link("set", index=idx, state="up")
    with netns.ipr(b) as ipr:
        idx = ipr.link_lookup(ifname="zb")[0]
        ipr.addr("add", index=idx, address="198.18.0.2", prefixlen=24)
        ipr.link("set", index=idx, state="up")


def test_confirmed_zombie_across_two_namespaces(lab):
    a, b = lab.namespace(), lab.namespace()
    _veth_pair(lab, a, b)
    lsock = lab.run(b, listener, socket.AF_INET, "198.18.0.2", 8080)
    lab.sockets.append(lsock)

    def connect() -> socket.socket:
        client = socket.create_connection(("198.18.0.2", 8080), timeout=5)
        lab.sockets.append(client)
        return client

    doomed = lab.run(a, connect)
    healthy = lab.run(a, connect)
    servers = [lsock.accept()[0] for _ in range(2)]
    lab.sockets += servers
    doomed_port = doomed.getsockname()[1]
    victim = next(s for s in servers if s.getpeername()[1] == doomed_port)

    ref_a, ref_b = lab.ref(a), lab.ref(b)
    counters_b = lab.keep(KernelCounters(ref_b))
    # The peer's socket goes away without a word reaching A: B's link goes down (its RST
    # has no route), then B's socket is destroyed through sock_diag.
    with netns.ipr(b) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="zb")[0], state="down")
    diag_b = sd.InetDiag.open_in(ref_b, net_admin=True)
    try:
        for rec in list(diag_b.dump_records(socket.AF_INET, 1 << sd.ESTABLISHED)):
            dport = struct.unpack_from(">H", rec, sd.OFF_DPORT)[0]
            if dport == doomed_port:
                cookie = struct.unpack_from("=Q", rec, sd.OFF_COOKIE)[0]
                diag_b.destroy(
                    socket.AF_INET,
                    8080,
                    dport,
                    rec[sd.OFF_SRC : sd.OFF_SRC + 4],
                    rec[sd.OFF_DST : sd.OFF_DST + 4],
                    cookie,
                )
    finally:
        diag_b.close()
    with pytest.raises(OSError):
        victim.recv(1)  # the kernel aborted it (ECONNABORTED)

    moved = {
        s.tags["group"]: s.fields
        for s in counters_b.sample(time.time())
        if s.measurement == "tcp_counters"
    }
    assert moved["Tcp"]["OutRsts"] >= 1  # the abort sent (tried to send) a reset
    assert moved["Tcp"]["EstabResets"] >= 1

    time.sleep(0.6)
    zombies = lab.keep(ZombieScan(ref_a, idle_threshold_s=0.5, peer=ref_b))
    report = zombies.take()
    assert len(report.candidates) == 2  # both client sockets are silent, no keepalive
    assert [c.sport for c in zombies.confirmed] == [doomed_port]
    assert zombies.confirmed[0].dst == "198.18.0.2" and zombies.confirmed[0].dport == 8080
    assert healthy.getsockname()[1] != doomed_port

    # the same through the two-census function
    diag_b2 = sd.InetDiag.open_in(ref_b)
    try:
        peer = socket_tuples(diag_b2, b)
    finally:
        diag_b2.close()
    assert [c.sport for c in confirm_zombies(report, peer)] == [doomed_port]
    point = zombies.sample(time.time())[0]
    assert point.fields["candidates"] == 2 and point.fields["confirmed"] == 1
    assert point.tags["peer"] == b


CHAOS = str(Path(sys.executable).parent / "chaos")
DROP_FIN_RST = (
    "table inet ctest {\n chain out {\n  type filter hook output priority 0;\n"
    "  tcp flags & (fin | rst) != 0 drop\n }\n}\n"
)


def established_count(name: str) -> int:
    """ESTABLISHED TCP sockets in a namespace, as `ss` (iproute2) counts them."""
    out = netns.run(name, ["ss", "-Htn", "state", "established"]).stdout
    return len(out.splitlines())


def collected_zombies(name: str, *flags: str) -> tuple[dict, list[dict]]:
    """`chaos collect --netns NAME --once --json FLAGS`: its tcp_zombies point and its
    tcp_zombies_peer points."""
    done = subprocess.run(
        [CHAOS, "collect", "--netns", name, "--once", "--json", *flags],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    points = [json.loads(line) for line in done.stdout.splitlines()]
    [zombies] = [p for p in points if p["measurement"] == "tcp_zombies"]
    return zombies, [p for p in points if p["measurement"] == "tcp_zombies_peer"]


def dual_stack_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(16)
    return sock


def test_standalone_collect_confirms_zombies_whose_peer_is_on_this_host(lab):
    """11 silent connections from A to B; B closes 5 of its ends while its nft drops its
    own FIN and RST, so A never hears: 5 real zombies, 6 healthy idle connections."""
    a, b = lab.namespace(), lab.namespace()
    _veth_pair(lab, a, b)
    assert netns.nft(b, DROP_FIN_RST).returncode == 0
    # B's ends of 6 connections are IPv4 sockets, of 5 dual-stack ones (IPv4-mapped)
    v4 = lab.run(b, listener, socket.AF_INET, "198.18.0.2", 8080)
    dual = lab.run(b, dual_stack_listener, 8081)
    lab.sockets += [v4, dual]

    def connect(port: int, n: int) -> list[socket.socket]:
        return [socket.create_connection(("198.18.0.2", port), timeout=5) for _ in range(n)]

    lab.sockets += lab.run(a, connect, 8080, 6) + lab.run(a, connect, 8081, 5)  # type: ignore
    servers = [v4.accept()[0] for _ in range(6)] + [dual.accept()[0] for _ in range(5)]
    lab.sockets += servers
    assert {s.family for s in servers[-5:]} == {socket.AF_INET6}
    for doomed in servers[:3] + servers[-2:]:  # abortive close: freed at once, its RST dropped
        doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        doomed.close()
    # independent truth: ss sees all 11 alive in A, only 6 ends left in B
    assert (established_count(a), established_count(b)) == (11, 6)
    time.sleep(1.2)

    zombies, peers = collected_zombies(a, "--zombie-idle", "1")
    fields = zombies["fields"]
    assert (fields["candidates"], fields["confirmed"], fields["unmatched"]) == (11, 5, 0)
    assert fields["threshold_s"] == 1.0
    assert [(p["tags"]["peer"], p["fields"]) for p in peers] == [
        (b, {"candidates": 11, "confirmed": 5})
    ]

    text = subprocess.run(
        [CHAOS, "collect", "--netns", a, "--once", "--zombie-idle", "1"],
        capture_output=True, text=True, timeout=60,
    ).stdout
    rows = dict(re.findall(r"^\s*((?:zombies|confirmed|unchecked) \(.*?\))\s+(\d+)", text, re.M))
    assert rows == {
        "zombies (idle > 1.0 s, no keepalive)": "11",
        "confirmed (peer socket gone)": "5",
        "unchecked (peer not on this host)": "0",
    }

    # control: at the default threshold (60 s) nothing is silent long enough
    fields = collected_zombies(a)[0]["fields"]
    assert (fields["candidates"], fields["confirmed"], fields["threshold_s"]) == (0, 0, 60.0)

    # B without its name, held by a process: found through the process
    holder = netns.popen(b, ["sleep", "60"])
    lab.closers.append(lambda: (holder.kill(), holder.wait()))
    netns.remove(b)
    zombies, peers = collected_zombies(a, "--zombie-idle", "1")
    assert (zombies["fields"]["candidates"], zombies["fields"]["confirmed"]) == (11, 5)
    assert [p["tags"]["peer"] for p in peers] == [f"pid:{holder.pid}"]

    # control: B seen by nobody (only this test's sockets hold it) is "not on this host":
    # nothing confirmed, every candidate unchecked
    holder.kill()
    holder.wait()
    fields = collected_zombies(a, "--zombie-idle", "1")[0]["fields"]
    assert (fields["candidates"], fields["confirmed"], fields["unmatched"]) == (11, 0, 11)


# --- conntrack and the CLI ----------------------------------------------------------------------


def test_conntrack_states_when_the_namespace_tracks(lab):
    name = lab.namespace()
    ruleset = (
        "table inet ctest {\n chain out {\n  type filter hook output priority 0;\n"
        "  ct state new counter accept\n }\n}\n"
    )
    proc = netns.popen(name, ["nft", "-f", "-"], stdin=-1, stdout=-1, stderr=-1)
    _out, err = proc.communicate(ruleset.encode(), timeout=20)
    assert proc.returncode == 0, err

    def build() -> None:
        lsock = listener(socket.AF_INET, "127.0.0.1")
        lab.sockets.append(lsock)
        make_time_wait(lab, lsock, 3)
        connect_pairs(lab, lsock, 2)

    lab.run(name, build)
    collector = lab.keep(Conntrack(lab.ref(name)))
    assert collector.available
    fields = collector.sample(time.time())[0].fields
    assert fields["tcp_established"] == 2
    assert fields["tcp_time_wait"] == 3
    assert fields["entries"] == 5
    assert "insert_failed" in fields and "invalid" in fields


def namespace_with_time_wait(lab: Lab, count: int) -> str:
    """A fresh namespace holding exactly ``count`` TIME_WAIT sockets."""
    name = lab.namespace()

    def build() -> None:
        lsock = listener(socket.AF_INET, "127.0.0.1")
        lab.sockets.append(lsock)
        make_time_wait(lab, lsock, count)

    lab.run(name, build)
    wait_for(lambda: sockstat_tw(name) == count)
    return name


def printed_points(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    """What `chaos collect --json` printed: one JSON point per line."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def all_states(points: list[dict]) -> dict:
    return next(
        x for x in points if x["measurement"] == "tcp_states" and x["tags"]["family"] == "all"
    )


def test_collect_main_once_json_for_a_namespace(lab, capsys):
    name = namespace_with_time_wait(lab, 4)
    assert collect_main(name, None, once=True, as_json=True, interval=1.0) == 0
    lines = printed_points(capsys)
    measurements = {line["measurement"] for line in lines}
    assert {"tcp_states", "tcp_teardown", "port_budget", "tcp_zombies", "tcp_counters"} <= (
        measurements
    )
    states = all_states(lines)
    assert states["tags"]["netns"] == name and states["fields"]["time_wait"] == 4

    assert collect_main(name, None, once=True, as_json=False, interval=1.0) == 0
    text = capsys.readouterr().out
    assert "time_wait" in text and "port budget" in text


def test_collect_main_by_container_samples_its_process_namespace(lab, capsys, tmp_path,
                                                                  monkeypatch):
    """--container NAME: the pid the engine's CLI reports (a stand-in here: no engine runs on
    these machines) leads to that process's namespace, labelled container:NAME."""
    name = namespace_with_time_wait(lab, 3)
    inside = netns.popen(name, ["sleep", "60"])
    try:
        docker_stand_in(tmp_path / "bin", "web", str(inside.pid))
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
        assert collect_main(None, None, True, True, 1.0, container="web") == 0
    finally:
        inside.kill()
        inside.wait()
    states = all_states(printed_points(capsys))
    assert states["tags"]["netns"] == "container:web" and states["fields"]["time_wait"] == 3


def test_sampler_runs_the_standard_collectors_of_a_namespace(lab):
    name = lab.namespace()
    lab.run(name, lambda: make_time_wait(lab, listener(socket.AF_INET, "127.0.0.1"), 3))
    collectors = collectors_for(lab.ref(name), tags={"role": "client"})
    sampler = Sampler(collectors, interval=0.2)
    lab.closers.append(sampler.close_collectors)
    sampler.start()
    try:
        wait_for(lambda: sampler.stats.ticks >= 2)
    finally:
        sampler.stop()
    samples = sampler.drain()
    assert sampler.stats.errors == 0
    names = {s.measurement for s in samples}
    assert {"tcp_states", "tcp_teardown", "port_budget_summary", "tcp_zombies"} <= names
    assert {"tcp_counters", "sockstat", "collector_cost"} <= names
    assert all(
        s.tags.get("role") == "client" for s in samples if s.tags.get("collector") != "sampler"
    )
    costs = {s.tags["collector"] for s in samples if s.measurement == "collector_cost"}
    assert {"census", "port_budget", "zombies", "kernel", "sampler"} <= costs
    body = to_lines(samples)
    assert body.count("\n") == len(samples) and ",role=client" in body
