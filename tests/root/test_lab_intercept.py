"""An intercepting gateway (DNAT to the proxy) and the origin's escape counter, for real.

Seed 003: when the gateway's conntrack entry expires while the client sits in CLOSE_WAIT,
the client's late FIN is forwarded without NAT and reaches the origin from the client's
own address. The lab's ``lab_escapes`` counter at the origin must see exactly those FINs,
and none when the conntrack timeout outlives the CLOSE_WAIT.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from chaos.collect.labcounters import LabCounter
from chaos.errors import LabError
from chaos.kernel import netns
from chaos.lab import lab
from chaos.record.rundir import RunDir
from chaos.scenario.loader import parse

CONNECTIONS = 5


def intercept_scenario(close_wait_timeout: int):
    return parse(
        f"""
name: intercept
lab:
  gateway:
    intercept: true
    sysctls: {{net.netfilter.nf_conntrack_tcp_timeout_close_wait: {close_wait_timeout}}}
  proxy: {{mode: tcp}}
  origin: {{protocol: raw, close: server, response_bytes: 64}}
""",
        "<test>",
    )


def open_and_hold(host: str, port: int) -> list[socket.socket]:
    """Requests whose server FIN is read, then left in CLOSE_WAIT (not closed)."""
    held = []
    for _ in range(CONNECTIONS):
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(b"GET\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert len(received) == 64
        held.append(sock)
    return held


@pytest.mark.parametrize(("timeout", "hold", "escapes"), [(1, 3, CONNECTIONS), (60, 3, 0)])
def test_late_fin_escapes_only_after_conntrack_expiry(lab_name, tmp_path, timeout, hold,
                                                     escapes):
    run = RunDir.create("intercept", tmp_path)
    state = lab.up(intercept_scenario(timeout), lab_name, run)
    try:
        # The client talks to the origin's address; the proxy answers through the DNAT.
        assert state.target == {"host": "198.18.3.2", "port": 8080}
        counter = LabCounter(state.namespaces["origin"], "lab_escapes", tags={"role": "origin"})
        assert counter.read() == (0, 0)
        held = netns.run_in(state.namespaces["client"], open_and_hold, "198.18.3.2", 8080)
        # An expired entry is ignored at lookup: the late FIN finds none.
        time.sleep(hold)
        for sock in held:
            sock.close()
        time.sleep(0.5)
        packets, nbytes = counter.read()
        assert packets == escapes
        # the netlink read agrees with nft's own listing of the counter
        listed = netns.run(state.namespaces["origin"], [netns.nft_binary(), "-j", "list",
                           "counter", "inet", "chaos_lab", "escaped"], timeout=10)  # fmt: skip
        [nft_counter] = [i["counter"] for i in json.loads(listed.stdout)["nftables"]
                         if "counter" in i]  # fmt: skip
        assert (nft_counter["packets"], nft_counter["bytes"]) == (packets, nbytes)
        [sample] = counter.sample(time.time())
        assert sample.measurement == "lab_escapes" and sample.tags["role"] == "origin"
        assert sample.fields["packets"] == escapes
        # the table gone (the lab half torn down): a clear error, not a traceback
        netns.nft(state.namespaces["origin"], "delete table inet chaos_lab\n")
        with pytest.raises(LabError, match="cannot read the lab counter escaped"):
            counter.read()
        counter.close()
    finally:
        lab.down(lab_name)
    assert not Path(f"/run/netns/chaos-{lab_name}-origin").exists()
