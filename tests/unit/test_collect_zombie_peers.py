"""Which namespace confirms a zombie candidate: the lab's peer rules and the NAT translation."""

from __future__ import annotations

import socket
import textwrap

import pytest

from chaos.collect.zombies import (
    Conn,
    SocketTuples,
    confirm_zombies,
    mirrored_keys,
    nat,
    peers_from_rules,
)
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.lab.topology import Plan
from chaos.scenario import loader


def plan(lab_yaml: str) -> Plan:
    text = "name: t\nlab:\n" + textwrap.indent(textwrap.dedent(lab_yaml), "  ")
    return Plan("t", loader.parse(text, "test").lab)


def conn(src: str, sport: int, dst: str, dport: int) -> Conn:
    tuple36 = (
        sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + sd.addr_bytes(socket.AF_INET, src)
        + sd.addr_bytes(socket.AF_INET, dst)
    )
    return Conn(socket.AF_INET, tuple36)


def key(src: str, sport: int, dst: str, dport: int) -> tuple[int, bytes]:
    return socket.AF_INET, conn(src, sport, dst, dport).tuple36


def routes(p: Plan, role: str, remote: str) -> list[str]:
    """The peer roles ``role``'s candidates toward ``remote`` are checked in, in order."""
    refs = {r: NetnsRef(r, inode=None) for r in ("client", "gateway", "proxy", "origin", "host")}
    return [
        peer.ns.label
        for peer in peers_from_rules(role, p.peer_rules(), refs.get)
        if peer.covers(remote)
    ]


def test_lab_peers_by_remote_address():
    p = plan("proxy: {mode: tcp}")
    assert routes(p, "proxy", "198.18.1.10") == ["client"]
    assert routes(p, "proxy", "198.18.1.200") == ["client"]
    assert routes(p, "proxy", "198.18.3.2") == ["origin"]
    assert routes(p, "proxy", "10.0.0.1") == []
    assert routes(p, "client", "198.18.2.2") == ["proxy"]
    assert routes(p, "client", "198.18.3.2") == []  # only reachable through the proxy
    assert routes(p, "origin", "198.18.3.1") == ["proxy"]
    assert routes(p, "gateway", "198.18.1.10") == []
    external = plan("proxy: {kind: external, address: '198.18.1.1:9000'}")
    assert routes(external, "client", "198.18.1.1") == ["host"]
    assert routes(external, "origin", "198.18.3.1") == ["host"]


def test_missing_peer_namespaces_are_left_out():
    rules = plan("proxy: {mode: tcp}").peer_rules()
    only_client = {"client": NetnsRef("client", inode=None)}
    peers = peers_from_rules("proxy", rules, only_client.get)
    assert [p.ns.label for p in peers] == ["client"]


def test_dnat_gateway_translates_both_sides():
    p = plan("gateway: {intercept: true}\nproxy: {mode: tcp}")
    assert routes(p, "client", "198.18.3.2") == ["proxy"]
    nats = {(r.role, r.peer): r.nat for r in p.peer_rules() if r.nat}
    assert nats == {
        ("client", "proxy"): (("198.18.3.2", 8080), ("198.18.2.2", 8080)),
        ("proxy", "client"): (("198.18.2.2", 8080), ("198.18.3.2", 8080)),
    }
    # the client dialled the origin's address; the proxy's socket is at its own address
    to_proxy = nat(*nats["client", "proxy"])
    client_side = conn("198.18.1.10", 40000, "198.18.3.2", 8080)
    assert key("198.18.2.2", 8080, "198.18.1.10", 40000) in to_proxy(client_side)
    # the proxy sees the client at its own address, which the client knows as the origin's
    to_client = nat(*nats["proxy", "client"])
    keys = to_client(conn("198.18.2.2", 8080, "198.18.1.10", 40000))
    assert key("198.18.1.10", 40000, "198.18.3.2", 8080) in keys
    # a connection made to the proxy directly keeps its mirror image as a possible key
    assert key("198.18.1.10", 40000, "198.18.2.2", 8080) in keys


@pytest.mark.parametrize("peer_has_it", [True, False])
def test_confirm_with_nat_keys(peer_has_it):
    candidate = conn("198.18.1.10", 40000, "198.18.3.2", 8080)
    translate = nat(("198.18.3.2", 8080), ("198.18.2.2", 8080))
    held = {key("198.18.2.2", 8080, "198.18.1.10", 40000)} if peer_has_it else set()
    peer = SocketTuples("proxy", frozenset(held | {key("1.2.3.4", 1, "5.6.7.8", 2)}))
    confirmed = confirm_zombies([candidate], peer, translate)
    assert confirmed == ([] if peer_has_it else [candidate])
    # without the translation the live connection would look dead
    assert confirm_zombies([candidate], peer) == [candidate]
    # untouched connections are mirrored as usual
    other = conn("198.18.1.10", 40001, "198.18.2.2", 8080)
    assert translate(other) == key("198.18.2.2", 8080, "198.18.1.10", 40001)


def test_mirrored_keys_include_the_dual_stack_view_both_ways():
    """An IPv4 connection's peer may be a dual-stack socket (IPv4-mapped addresses), and a
    dual-stack candidate's peer a plain IPv4 socket."""
    v4 = conn("198.18.0.1", 40000, "198.18.0.2", 8080)
    mapped = Conn(
        socket.AF_INET6,
        (8080).to_bytes(2, "big")
        + (40000).to_bytes(2, "big")
        + sd.addr_bytes(socket.AF_INET6, "::ffff:198.18.0.2")
        + sd.addr_bytes(socket.AF_INET6, "::ffff:198.18.0.1"),
    )
    assert mirrored_keys(v4) == [
        (socket.AF_INET, v4.reversed_tuple()),
        (socket.AF_INET6, mapped.tuple36),
    ]
    assert mirrored_keys(mapped)[1] == key("198.18.0.1", 40000, "198.18.0.2", 8080)
    plain6 = Conn(socket.AF_INET6, bytes(4) + sd.addr_bytes(socket.AF_INET6, "fd00::1") * 2)
    assert len(mirrored_keys(plain6)) == 1
