"""Confirmed zombies through a real proxy (and a DNAT gateway), in a real lab (root).

HAProxy (``mode: tcp``, hour-long timeouts) carries idle connections held by two processes
in the client namespace. The gateway then drops every FIN and RST leaving the clients (the
``nft-filter`` fault type), and one holder is killed: its sockets become orphans that die
after one retry (``tcp_orphan_retries: 1``) without the proxy hearing of it. The proxy's
client-side ends of those connections are then zombies, and only those may be *confirmed*:
the live holder's connections, and every proxy-to-origin connection, are silent candidates
whose other end still exists. The peers come from the lab's addressing exactly as
``chaos run`` builds them (:meth:`Plan.peer_rules` + :func:`peers_from_rules`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from test_collect_census import wait_for
from test_teardown_states import running_lab

from chaos.collect.zombies import ZombieScan, confirm_zombies, peers_from_rules, socket_tuples
from chaos.faults.engine import targets
from chaos.faults.registry import fault_type
from chaos.kernel import netns
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.lab.topology import LabState, Plan
from chaos.scenario.model import Scenario

pytestmark = pytest.mark.root

LIVE, DOOMED = 3, 4
IDLE_S = 0.5

# Holds ``n`` idle connections to host:port from the given source addresses; prints
# "addr:port" of each local end, then waits for stdin to close (or to be killed).
HOLDER = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sources = sys.argv[4].split(",")
held = []
for i in range(n):
    s = socket.socket()
    s.bind((sources[i % len(sources)], 0))
    s.connect((host, port))
    held.append(s)
print(" ".join("%s:%d" % s.getsockname() for s in held), flush=True)
sys.stdin.read()
"""

SCENARIO = """
name: zombies
lab:
  client:
    addresses: 2
    sysctls: {{net.ipv4.tcp_orphan_retries: 1}}
  gateway: {{intercept: {intercept}}}
  proxy:
    mode: tcp
    timeouts: {{client: 1h, server: 1h}}
  origin: {{protocol: raw}}
"""


class Holder:
    """A process in the client namespace holding idle connections to the lab's target."""

    def __init__(self, state: LabState, n: int) -> None:
        target = state.target
        argv = [sys.executable, "-c", HOLDER, str(target["host"]), str(target["port"]), str(n)]
        argv.append(",".join(state.client_addresses))
        self.proc = netns.popen(
            state.namespaces["client"],
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.ends = {(a, int(p)) for a, p in (w.split(":") for w in line.split())}
        assert len(self.ends) == n, f"holder failed (exit {self.proc.poll()})"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()


def established(ref: NetnsRef) -> set[tuple[str, int, str, int]]:
    """(local addr, local port, remote addr, remote port) of every ESTABLISHED socket."""
    diag = sd.InetDiag.open_in(ref)
    try:
        out = set()
        for rec in diag.dump_records(sd.AF_ANY, sd.states_mask([sd.ESTABLISHED])):
            family = rec[16]
            out.add(
                (
                    sd.addr_text(family, rec[sd.OFF_SRC : sd.OFF_SRC + 16]),
                    int.from_bytes(rec[sd.OFF_SPORT : sd.OFF_SPORT + 2], "big"),
                    sd.addr_text(family, rec[sd.OFF_DST : sd.OFF_DST + 16]),
                    int.from_bytes(rec[sd.OFF_DPORT : sd.OFF_DPORT + 2], "big"),
                )
            )
        return out
    finally:
        diag.close()


def any_socket_of(ref: NetnsRef, ends: set[tuple[str, int]]) -> bool:
    """Does the namespace still hold a socket (any state) with one of these local ends?"""
    diag = sd.InetDiag.open_in(ref)
    try:
        for rec in diag.dump_records(sd.AF_ANY, sd.states_mask(sd.ALL_STATES)):
            port = int.from_bytes(rec[sd.OFF_SPORT : sd.OFF_SPORT + 2], "big")
            if (sd.addr_text(rec[16], rec[sd.OFF_SRC : sd.OFF_SRC + 16]), port) in ends:
                return True
        return False
    finally:
        diag.close()


def drop_client_fin_and_rst(stack: ExitStack, state: LabState) -> None:
    """The gateway drops FIN and RST from the clients, as two nft-filter faults."""
    gateway = targets.resolve("gateway", state)
    for flags in ("fin", "rst"):
        fault = fault_type("nft-filter").validate(
            gateway, {"direction": "forward", "saddr": "198.18.1.0/24", "tcp_flags": flags}
        )
        handle = fault.prepare()
        stack.callback(type(fault).revert, handle)
        fault.apply(handle)


@pytest.fixture
def refs() -> Iterator[dict[str, NetnsRef]]:
    opened: dict[str, NetnsRef] = {}
    yield opened
    for ref in opened.values():
        ref.close()


def scans(
    scenario: Scenario, state: LabState, refs: dict[str, NetnsRef], stack: ExitStack
) -> dict[str, ZombieScan]:
    """One ZombieScan per role, with its peers as ``chaos run``'s sampling() builds them."""
    rules = Plan(state.name, scenario.lab).peer_rules()
    out = {}
    for role in ("client", "proxy", "origin"):
        peers = peers_from_rules(role, rules, refs.get)
        out[role] = ZombieScan(refs[role], idle_threshold_s=IDLE_S, peers=peers)
        stack.callback(out[role].close)
    return out


@pytest.mark.parametrize("intercept", [False, True], ids=["via-proxy", "via-dnat-gateway"])
def test_proxy_side_zombies_are_confirmed_and_live_connections_are_not(
    lab_name, tmp_path, refs, intercept
):
    yaml_text = SCENARIO.format(intercept=str(intercept).lower())
    with running_lab(lab_name, tmp_path, yaml_text) as (scenario, state, _), ExitStack() as stack:
        proxy_ip, proxy_port = str(state.proxy["host"]), int(state.proxy["port"])
        live = Holder(state, LIVE)
        stack.callback(live.close)
        doomed = Holder(state, DOOMED)
        stack.callback(doomed.close)
        for role, namespace in state.namespaces.items():
            refs[role] = NetnsRef.named(namespace)
        ns = refs
        clients = live.ends | doomed.ends

        def proxy_client_side() -> set[tuple[str, int]]:
            return {
                (ra, rp)
                for la, lp, ra, rp in established(ns["proxy"])
                if (la, lp) == (proxy_ip, proxy_port)
            }

        # every connection reached the proxy (and HAProxy dialled the origin for each)
        wait_for(lambda: proxy_client_side() == clients, 15)
        wait_for(lambda: len(established(ns["origin"])) == LIVE + DOOMED, 15)

        drop_client_fin_and_rst(stack, state)
        doomed.kill()
        # the orphans give up after one retry; nothing of them reached the proxy
        wait_for(lambda: not any_socket_of(ns["client"], doomed.ends), 15)
        assert proxy_client_side() == clients
        time.sleep(IDLE_S + 0.2)

        scan = scans(scenario, state, refs, stack)
        proxy = scan["proxy"]
        report = proxy.take()
        # candidates: both sides of every connection the proxy carries (no keepalive, silent)
        assert len(report.candidates) == 2 * (LIVE + DOOMED)
        assert {(c.dst, c.dport) for c in proxy.confirmed} == doomed.ends
        assert proxy.unmatched == 0
        client_label, origin_label = state.namespaces["client"], state.namespaces["origin"]
        assert proxy.by_peer == {
            client_label: (LIVE + DOOMED, DOOMED),
            origin_label: (LIVE + DOOMED, 0),
        }
        points = proxy.sample(time.time())
        main = next(p for p in points if p.measurement == "tcp_zombies")
        assert main.fields["confirmed"] == DOOMED and main.fields["unmatched"] == 0
        assert "peer" not in main.tags  # two peers: per-peer points instead
        per_peer = {p.tags["peer"]: p.fields for p in points if p.measurement == "tcp_zombies_peer"}
        assert per_peer[client_label] == {"candidates": LIVE + DOOMED, "confirmed": DOOMED}

        # the client's live connections and the origin's: silent, but their peer holds them
        client = scan["client"]
        client.take()
        assert {(c.src, c.sport) for c in client.last.candidates} == live.ends
        assert client.confirmed == [] and client.unmatched == 0
        assert client.by_peer == {state.namespaces["proxy"]: (LIVE, 0)}
        origin = scan["origin"]
        origin.take()
        assert len(origin.last.candidates) == LIVE + DOOMED
        assert origin.confirmed == [] and origin.unmatched == 0

        if intercept:
            # the client dialled the origin's address: only the DNAT mapping finds the
            # proxy's socket; a plain mirror would call every live connection a zombie
            assert {c.dst for c in client.last.candidates} == {state.origin["host"]}
            diag = sd.InetDiag.open_in(ns["proxy"])
            stack.callback(diag.close)
            mirror = confirm_zombies(client.last, socket_tuples(diag))
            assert len(mirror) == LIVE
