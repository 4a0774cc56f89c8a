"""TLS in the load, through a TLS-terminating HAProxy and nginx, checked against truth the tool
does not compute: the proxy's own log (one line per connection with the TLS protocol and
whether the session was resumed), tcpdump in the client namespace (who sent the first FIN,
who sent an RST, what the client sent after its request) and ``ss`` (who holds TIME_WAIT).

Real parts only: the lab's namespaces, the proxy with a certificate from the run's CA, and a
real Locust in the client namespace started with the options ``chaos run`` gives it. Every
load is small and bounded; the labs are removed.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fault_lab import tcpdump
from test_teardown_states import running_lab

from chaos.kernel import netns
from chaos.lab.proxies import parse_log
from chaos.lab.topology import LabState
from chaos.load.options import locustfile_for, user_options
from chaos.load.runner import LocustRun
from chaos.load.series import read_series
from chaos.record.rundir import RunDir
from chaos.run import lab_tls
from chaos.scenario.model import LoadTls, Scenario

pytestmark = pytest.mark.root

USERS = 4
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
RATE = 40
#: TIME_WAIT a load may leave beyond its promise: a user Locust stopped between its connect()
#: and its ClientHello closes a plain TCP connection (one per user at most)
STOPPED = USERS


@contextlib.contextmanager
def tls_lab(
    lab_name: str, tmp_path: Path, kind: str
) -> Iterator[tuple[Scenario, LabState, RunDir]]:
    # slow_connect: a busy machine's slow connect is no TLS matter here
    text = f"""\
        name: tls-{kind}
        lab:
          client: {{addresses: 2}}
          proxy: {{kind: {kind}, tls: true}}
        load: {{users: {USERS}, rate: {RATE}, rate_mode: shared, slow_connect: 10s}}
        """
    with running_lab(lab_name, tmp_path, text) as made:
        yield made


@dataclass
class Flow:
    """One connection as tcpdump saw it in the client namespace."""

    client_payloads: list[int] = field(default_factory=list)  # bytes per client segment
    first_fin: str = ""  # "client" or "proxy"
    rst_from: set[str] = field(default_factory=set)


_LINE = re.compile(r"IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\].* length (\d+)")
#: an alert record (close_notify) on the wire, AES-GCM: TLS 1.3 (HAProxy here) 5 header bytes
#: + 2 alert + 1 inner type + 16 tag; TLS 1.2 (nginx here) 5 + 8 explicit nonce + 2 + 16
ALERT_RECORDS = {24, 31}


def flows(pcap: Path, proxy: str, port: int) -> list[Flow]:
    """The TLS connections the capture saw open, from tcpdump's own reading of it (a client
    SYN starts a new one: without TIME_WAIT a 4-tuple comes back at once)."""
    text = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    current: dict[tuple[str, int], Flow] = {}
    seen: list[Flow] = []
    for line in text.splitlines():
        match = _LINE.search(line)
        if not match:
            continue
        src, sport, dst, dport, flags, length = match.groups()
        from_client = dst == proxy and int(dport) == port
        key = (src, int(sport)) if from_client else (dst, int(dport))
        if from_client and flags == "S":
            current[key] = Flow()
            seen.append(current[key])
        flow = current.get(key)
        if flow is None:  # a connection from before the capture
            continue
        side = "client" if from_client else "proxy"
        if from_client and int(length):
            flow.client_payloads.append(int(length))
        if "F" in flags and not flow.first_fin:
            flow.first_fin = side
        if "R" in flags:
            flow.rst_from.add(side)
    # Locust may stop a user between its connect() and its ClientHello: not a TLS connection
    return [flow for flow in seen if flow.client_payloads]


def capture(state: LabState, pcap: Path) -> contextlib.AbstractContextManager[None]:
    """The client's side of its connections to the proxy."""
    return tcpdump(state.namespaces["client"], pcap, int(state.proxy["port"]))


def tls_load(
    scenario: Scenario, state: LabState, run: RunDir, name: str, seconds: float, **load: object
) -> Path:
    """A drained load (users finish their connection) with the scenario's load changed by
    ``load``; returns its run directory (series, Locust CSVs)."""
    varied = scenario.model_copy(update={"load": scenario.load.model_copy(update=load)})
    base = lab_tls(varied, state, run)
    assert base is not None
    if base.settings.ca is None:  # the run's own CA by default
        assert base.ca == f"{run.path}/proxy/tls/ca.crt"
    out = run.path / name
    out.mkdir()
    locust = LocustRun(
        locustfile_for(varied.load),
        host=f"tcp://{state.proxy['host']}:{state.proxy['port']}",
        run_dir=out,
        users=varied.load.users,
        spawn_rate=100,
        run_time=seconds,
        workers=0,
        user_args=user_options(
            varied.load, str(state.origin["protocol"]), state.client_addresses, 1, base
        ),
        spawn=lambda argv, **kw: netns.popen(state.namespaces["client"], argv, **kw),
        stop_timeout=5,
    )
    locust.run()
    return out


def time_wait(namespace: str, side: str, port: int) -> int:
    """TIME_WAIT sockets by ``ss`` in ``namespace`` whose ``side`` (sport/dport) is ``port``:
    only the client-to-proxy leg."""
    argv = ["ss", "-Htan", "state", "time-wait", f"( {side} = :{port} )"]
    out = netns.run_in(
        namespace, lambda: subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    )
    return len(out.splitlines())


def series_counts(out: Path) -> tuple[int, int, int, dict[str, int]]:
    """(completed, failed, TLS handshakes, failures by class) over a load's series."""
    seconds = list(read_series(out))
    classes: dict[str, int] = {}
    for second in seconds:
        for name, count in second.failures.items():
            classes[name] = classes.get(name, 0) + count
    return (
        sum(s.completed for s in seconds),
        sum(s.failed for s in seconds),
        sum(s.summary("tls").count for s in seconds),
        classes,
    )


# --------------------------------------------------------------------------- handshakes
@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_every_handshake_is_counted_and_resumption_shows_in_the_proxy_log(kind, lab_name, tmp_path):
    with tls_lab(lab_name, tmp_path, kind) as (scenario, state, run):
        resumed_load = tls_load(scenario, state, run, "on", 2, tls=LoadTls(resumption=True))
        full_load = tls_load(scenario, state, run, "off", 2, tls=LoadTls(resumption=False))
        time.sleep(0.3)  # the proxy's last log lines
        entries = parse_log(run.path / "logs" / "proxy.log")
    on, off = series_counts(resumed_load), series_counts(full_load)
    for completed, failed, handshakes, _ in (on, off):
        assert failed == 0 and completed >= 30, (on, off)
        assert handshakes == completed  # a drained load: every connection shook hands once
    # the proxy logged one TLS connection per handshake the series counted, in load order
    assert all(entry.tls in ("TLSv1.2", "TLSv1.3") for entry in entries), entries[:3]
    assert len(entries) == on[0] + off[0]
    logged_on, logged_off = entries[: on[0]], entries[on[0] :]
    # with resumption each user's first handshake is a full one, every later one resumed
    assert on[0] - USERS <= sum(e.resumed for e in logged_on) <= on[0] - 1
    assert not any(e.resumed for e in logged_off)


# --------------------------------------------------------------------------- endings
@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_tls_endings_leave_the_states_they_promise(kind, lab_name, tmp_path):
    with tls_lab(lab_name, tmp_path, kind) as (scenario, state, run):
        proxy, port = str(state.proxy["host"]), int(state.proxy["port"])
        client_ns, proxy_ns = state.namespaces["client"], state.namespaces["proxy"]
        seen = {}
        for name, teardown, tls in (
            ("close-notify", "client-close", LoadTls()),
            ("fin", "client-close", LoadTls(close_notify=False)),
            ("rst", "abort", LoadTls()),
        ):
            before = time_wait(client_ns, "dport", port), time_wait(proxy_ns, "sport", port)
            pcap = run.path / f"{name}.pcap"
            with capture(state, pcap):
                out = tls_load(scenario, state, run, name, 2, teardown=teardown, tls=tls)
            after = time_wait(client_ns, "dport", port), time_wait(proxy_ns, "sport", port)
            completed, failed, _, classes = series_counts(out)
            assert failed == 0 and completed >= 30, (name, classes)
            seen[name] = (
                flows(pcap, proxy, port),
                after[0] - before[0],  # TIME_WAIT the load left in the client
                after[1] - before[1],  # ... and in the proxy
                completed,
            )
        if kind == "haproxy":  # the control needs one proxy only
            # a load that trusts other CAs than the run's completes no handshake
            time.sleep(0.3)
            logged = len(parse_log(run.path / "logs" / "proxy.log"))
            untrusted = tls_load(scenario, state, run, "untrusted", 1, tls=LoadTls(ca=SYSTEM_CAS))
            time.sleep(0.3)
            assert len(parse_log(run.path / "logs" / "proxy.log")) == logged  # none passed
            completed, failed, handshakes, classes = series_counts(untrusted)
            assert completed == 0 and handshakes == 0 and failed >= 10
            assert classes == {"TLS_CERTIFICATE_VERIFY_FAILED": failed}

    # close_notify then FIN: the client's last record is its close_notify; the proxy answers
    # with its own and closes first, so the proxy holds the TIME_WAIT
    connections, client_tw, proxy_tw, completed = seen["close-notify"]
    assert len(connections) == completed
    assert all(f.client_payloads[-1] in ALERT_RECORDS for f in connections)
    assert all(f.first_fin == "proxy" and not f.rst_from for f in connections)
    assert proxy_tw >= completed * 0.9 and client_tw <= STOPPED
    # FIN without close_notify: the request is the client's last record, its FIN the first
    connections, client_tw, proxy_tw, completed = seen["fin"]
    assert len(connections) == completed
    assert all(not ALERT_RECORDS & set(f.client_payloads) for f in connections)
    assert all(f.first_fin == "client" for f in connections)
    assert proxy_tw <= STOPPED
    if kind == "haproxy":
        # HAProxy's close_notify reaches a closed socket; the client's kernel resets
        assert all("client" in f.rst_from for f in connections)
        assert client_tw <= STOPPED
    else:
        # nginx closes without a word: the client holds the TIME_WAIT
        assert all(not f.rst_from for f in connections)
        assert client_tw >= completed * 0.9
    # RST: no FIN, no close_notify, no TIME_WAIT anywhere
    connections, client_tw, proxy_tw, completed = seen["rst"]
    assert len(connections) == completed
    assert all(not f.first_fin and f.rst_from == {"client"} for f in connections)
    assert all(not ALERT_RECORDS & set(f.client_payloads) for f in connections)
    assert client_tw <= STOPPED and proxy_tw <= STOPPED
