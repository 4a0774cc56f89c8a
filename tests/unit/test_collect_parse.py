"""Collectors without root: text parsing, line protocol, forecast, bytecode, record walking."""

from __future__ import annotations

import math
import socket
import struct
import threading
import time

import pytest

from chaos.collect.base import deltas
from chaos.collect.budget import count_reserved, parse_port_range, seconds_left, slope
from chaos.collect.census import record_format
from chaos.collect.conntrack import count_tcp_states, parse_ct_stats
from chaos.collect.kernel import KernelCounters, flatten, parse_netstat, parse_sockstat
from chaos.collect.sampler import Sampler
from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.record.point import Sample, to_line, to_lines

NETSTAT = """\
TcpExt: SyncookiesSent TW TWRecycled TCPTimeWaitOverflow TCPACKSkippedTimeWait
TcpExt: 0 11 2 5 7
IpExt: InNoRoutes InOctets
IpExt: 0 123456789012
MPTcpExt: MPCapableSYNRX
MPTcpExt: 0
"""

SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens CurrEstab OutRsts EstabResets
Tcp: 1 200 120000 -1 42 3 9 4
Udp: InDatagrams NoPorts
Udp: 5 6
"""

SOCKSTAT = """\
sockets: used 12
TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 0
UDP: inuse 0 mem 0
FRAG: inuse 0 memory 0
"""


def test_parse_netstat_pairs_groups():
    parsed = parse_netstat(NETSTAT)
    assert parsed["TcpExt"] == {
        "SyncookiesSent": 0,
        "TW": 11,
        "TWRecycled": 2,
        "TCPTimeWaitOverflow": 5,
        "TCPACKSkippedTimeWait": 7,
    }
    assert parsed["IpExt"]["InOctets"] == 123456789012
    assert parsed["MPTcpExt"] == {"MPCapableSYNRX": 0}


def test_parse_snmp_keeps_negative_gauges():
    parsed = parse_netstat(SNMP)
    assert parsed["Tcp"]["MaxConn"] == -1
    assert parsed["Tcp"]["OutRsts"] == 9
    assert parsed["Udp"] == {"InDatagrams": 5, "NoPorts": 6}
    flat = flatten(parsed, ("Tcp",))
    assert flat["Tcp.CurrEstab"] == 3 and "Udp.NoPorts" not in flat


def test_parse_netstat_skips_malformed_pairs():
    text = "TcpExt: A B\nTcpExt: 1\nTcp: X\nIp: 2\nIpExt: Y\nIpExt: 3\n"
    assert parse_netstat(text) == {"IpExt": {"Y": 3}}


def test_parse_sockstat_and_sockstat6():
    parsed = parse_sockstat(SOCKSTAT)
    assert parsed["sockets"] == {"used": 12}
    assert parsed["TCP"] == {"inuse": 1, "orphan": 0, "tw": 0, "alloc": 1, "mem": 0}
    assert parsed["FRAG"] == {"inuse": 0, "memory": 0}
    assert parse_sockstat("TCP6: inuse 4\nUDP6: inuse 1\n") == {
        "TCP6": {"inuse": 4},
        "UDP6": {"inuse": 1},
    }


def test_deltas_count_resets_from_zero():
    assert deltas({"a": 5, "b": 2, "c": 1}, {"a": 3, "b": 7}) == {"a": 2, "b": 2}
    assert deltas({"a": 1}, None) == {}


def test_conntrack_stats_sum_cpus_but_not_entries():
    text = (
        "entries  clashres found invalid insert_failed drop early_drop\n"
        "00000005  00000000 00000001 0000000a 00000001 00000000 00000002\n"
        "00000005  00000001 00000001 00000006 00000000 00000003 00000000\n"
    )
    stats = parse_ct_stats(text)
    assert stats["entries"] == 5
    assert stats["invalid"] == 16 and stats["insert_failed"] == 1
    assert stats["drop"] == 3 and stats["early_drop"] == 2 and stats["clashres"] == 1
    assert parse_ct_stats("") == {}


# two ctnetlink messages captured from this kernel: one ESTABLISHED, one TIME_WAIT entry
CTNETLINK = bytes.fromhex(
    "d4000000000102000100000049110000020000003400018014000180080001007f000001080002007f0000"
    "011c000280050001000600000006000200a8fc00000600030015b300003400028014000180080001007f00"
    "0001080002007f0000011c00028005000100060000000600020015b3000006000300a8fc00000800030000"
    "00000e080008000000000008000c00fe9187d008000b00000000010800070000069780300004802c000180"
    "0500010003000000050002000a000000050003000a00000006000400230000000600050023000000d40000"
    "00000102000100000049110000020000003400018014000180080001007f000001080002007f0000011c00"
    "0280050001000600000006000200a90600000600030015b300003400028014000180080001007f00000108"
    "0002007f0000011c00028005000100060000000600020015b3000006000300a906000008000300000000"
    "0e080008000000000008000c00fb08928e08000b00000000010800070000000077300004802c0001800500"
    "010007000000050002000a000000050003000a000000060004002700000006000500230000001400000003"
    "000200010000004911000000000000"
)


def test_conntrack_tcp_states_from_raw_messages():
    # the tuples' CTA_PROTO_NUM (type 1, value 6) must not be mistaken for a state
    assert count_tcp_states(CTNETLINK) == {3: 1, 7: 1}


# --- line protocol -------------------------------------------------------------------------


def test_line_protocol_types_and_order():
    sample = Sample(
        "tcp_states",
        {"netns": "lab-a", "family": "all"},
        {"established": 3, "ratio": 0.5, "exact": True, "note": "ok"},
        1_700_000_000_000_000_000,
    )
    assert to_line(sample) == (
        'tcp_states,family=all,netns=lab-a established=3i,ratio=0.5,exact=true,note="ok" '
        "1700000000000000000"
    )


def test_line_protocol_escaping():
    sample = Sample(
        "my meas,x",
        {"tag key": "a,b=c d", "empty": "", "back": "ends\\"},
        {"f=1": 'say "hi" \\ there', "n,m": 2},
        5,
    )
    line = to_line(sample)
    assert line == (
        "my\\ meas\\,x,back=ends\\\\,tag\\ key=a\\,b\\=c\\ d "
        'f\\=1="say \\"hi\\" \\\\ there",n\\,m=2i 5'
    )


def test_line_protocol_drops_unrepresentable_fields():
    assert to_line(Sample("m", {}, {"x": math.nan, "y": math.inf}, 1)) == ""
    assert to_line(Sample("m", {}, {"x": math.nan, "y": 1.25}, 1)) == "m y=1.25 1"
    assert to_line(Sample("m", {"t": "v"}, {"n": "line\nbreak"}, 1)) == 'm,t=v n="line\nbreak" 1'
    assert to_lines([Sample("m", {}, {"a": 1}, 1), Sample("m", {}, {}, 2)]) == "m a=1i 1\n"


# --- forecast --------------------------------------------------------------------------------


def test_slope_and_seconds_left_linear():
    points = [(100.0, 10), (101.0, 20), (102.0, 30), (103.0, 40)]
    assert slope(points) == pytest.approx(10.0)
    assert seconds_left(points, 100) == pytest.approx(6.0)


def test_forecast_noisy_series_uses_least_squares():
    points = [(0.0, 0), (1.0, 12), (2.0, 18), (3.0, 30)]
    assert slope(points) == pytest.approx(9.6)
    assert seconds_left(points, 126) == pytest.approx(10.0)


def test_forecast_flat_falling_short_and_full():
    assert seconds_left([(0.0, 5), (1.0, 5)], 10) is None
    assert seconds_left([(0.0, 8), (1.0, 6)], 10) is None
    assert seconds_left([(0.0, 5)], 10) is None
    assert slope([(1.0, 5), (1.0, 7)]) is None  # same instant: no slope
    assert seconds_left([(0.0, 5), (1.0, 10)], 10) == 0.0
    assert seconds_left([], 10) is None


def test_port_range_and_reserved_ports():
    assert parse_port_range("32768\t60999\n") == (32768, 60999)
    assert count_reserved("", 1000, 2000) == 0
    assert count_reserved("8080,1500-1509,1999-2500,999\n", 1000, 2000) == 12


# --- bytecode: checked against a transcription of the kernel's interpreter and audit --------


def _bc_ops(bc: bytes) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("=BBH", bc, i) for i in range(0, len(bc), 4)]


def _kernel_audit(bc: bytes) -> bool:
    """inet_diag_bc_audit(): the "yes" chain must end exactly at the end."""
    length = len(bc)
    pos = 0
    while length > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        min_len = 4
        if code in (sd.BC_S_GE, sd.BC_S_LE, sd.BC_D_GE, sd.BC_D_LE, sd.BC_S_EQ, sd.BC_D_EQ):
            min_len += 4
            if length < min_len:
                return False
        elif code != sd.BC_JMP:
            return False
        if no < min_len or no > length + 4 or no & 3:
            return False
        if yes < min_len or yes > length + 4 or yes & 3:
            return False
        pos += yes
        length -= yes
    return length == 0


def _kernel_run(bc: bytes, sport: int) -> bool:
    """inet_diag_bc_run() for a socket with local port ``sport``."""
    length = len(bc)
    pos = 0
    while length > 0:
        code, yes, no = struct.unpack_from("=BBH", bc, pos)
        if code == sd.BC_JMP:
            ok = False
        else:
            port = struct.unpack_from("=BBH", bc, pos + 4)[2]
            ok = {
                sd.BC_S_GE: sport >= port,
                sd.BC_S_LE: sport <= port,
                sd.BC_S_EQ: sport == port,
            }[code]
        step = yes if ok else no
        pos += step
        length -= step
    return length == 0


@pytest.mark.parametrize("listen", [[], [40005], [39000, 40001, 40005, 40009, 50000]])
def test_outbound_filter_semantics(listen):
    bc = sd.outbound_filter(40000, 40009, listen)
    assert _kernel_audit(bc)
    assert _kernel_audit(sd.bc_not(bc))
    for port in range(39990, 40020):
        expect = 40000 <= port <= 40009 and port not in listen
        assert _kernel_run(bc, port) is expect, port
        assert _kernel_run(sd.bc_not(bc), port) is (not expect), port


def test_compat_request_layout():
    req = sd.build_request(sd.AF_ANY, 1 << sd.TIME_WAIT, bytecode=b"\x01\x04\x08\x00")
    size, mtype, flags = struct.unpack_from("=IHH", req)
    assert (size, mtype, flags) == (len(req), sd.TCPDIAG_GETSOCK, 0x301)
    assert len(req) == 16 + 60 + 8  # inet_diag_req + one bytecode attribute
    assert struct.unpack_from("=I", req, 16 + 52)[0] == 1 << sd.TIME_WAIT
    v2 = sd.build_request(socket.AF_INET6, 2)
    assert struct.unpack_from("=HBB", v2, 4)[0] == sd.SOCK_DIAG_BY_FAMILY
    assert len(v2) == 16 + 56 and v2[16] == socket.AF_INET6 and v2[17] == socket.IPPROTO_TCP


# --- record walking --------------------------------------------------------------------------


def _record(size: int, state: int, sport: int = 1, family: int = 2, mtype: int = 20) -> bytes:
    head = struct.pack("=IHHII", size, mtype, 2, 1, 0)
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, 80)
    for addr in ("10.0.0.1", "10.0.0.2"):
        body += socket.inet_aton(addr).ljust(16, b"\0")
    return (head + body).ljust(size, b"\0")


def test_uniform_prefix_stops_at_a_different_record():
    chunk = b"".join(_record(96, 6, i) for i in range(5)) + _record(124, 1) + _record(96, 6)
    view = memoryview(chunk)
    assert sd.uniform_prefix(view, 0, len(chunk), 96) == 5
    assert sd.uniform_prefix(view, 5 * 96, len(chunk), 124) == 1
    assert sd.uniform_prefix(view, 5 * 96 + 124, len(chunk), 96) == 1
    done = struct.pack("=IHHIIi", 20, sd.NLMSG_DONE, 2, 1, 0, 0)
    chunk2 = b"".join(_record(96, 6) for _ in range(3)) + done
    assert sd.uniform_prefix(memoryview(chunk2), 0, len(chunk2), 96) == 3


def test_group_format_reads_family_state_and_destination():
    rec = _record(124, sd.ESTABLISHED, sport=40001)
    family, state, key = record_format("group", 124).unpack(rec)
    assert (family, state) == (2, sd.ESTABLISHED)
    assert int.from_bytes(key[:2], "big") == 80
    assert sd.addr_text(2, key[2:18]) == "10.0.0.1" and sd.addr_text(2, key[18:34]) == "10.0.0.2"


# --- collectors and the sampler without root ----------------------------------------------


def test_kernel_counters_on_the_host_report_increases():
    collector = KernelCounters(NetnsRef.host())
    try:
        samples = collector.sample(time.time())
    finally:
        collector.close()
    by_group = {s.tags.get("group"): s for s in samples if s.measurement == "tcp_counters"}
    assert set(by_group) == {"TcpExt", "Tcp"}
    assert by_group["TcpExt"].fields["TW"] >= 0  # an increase, not a total
    assert "interval_s" in by_group["Tcp"].fields and "CurrEstab" in by_group["Tcp"].fields
    sockstat = next(s for s in samples if s.measurement == "sockstat")
    assert {"tcp_inuse", "tcp_tw", "tcp_orphan", "sockets_used"} <= set(sockstat.fields)
    assert sockstat.tags == {"netns": "host"}


class _Fake:
    def __init__(self, name: str, delay: float = 0.0, period: float = 0.0, fail: bool = False):
        self.name = name
        self.netns = "test"
        self.period = period
        self.delay = delay
        self.fail = fail
        self.calls = 0

    def sample(self, now: float) -> list[Sample]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return [Sample("fake", {"netns": self.netns}, {"n": self.calls}, int(now * 1e9))]

    def close(self) -> None:
        pass


def test_sampler_tick_reports_costs_periods_and_errors():
    fast, slow, bad = _Fake("fast"), _Fake("slow", period=10.0), _Fake("bad", fail=True)
    fake_time = [1000.0]
    sampler = Sampler(
        [fast, slow, bad], interval=1.0, tags={"run": "r1"}, clock=lambda: fake_time[0]
    )
    first = sampler.tick()
    fake_time[0] += 1.0
    second = sampler.tick()
    assert (fast.calls, slow.calls, bad.calls) == (2, 1, 2)
    costs = [s for s in first if s.measurement == "collector_cost"]
    assert {s.tags["collector"] for s in costs} == {"fast", "slow", "bad", "sampler"}
    bad_cost = next(s for s in costs if s.tags["collector"] == "bad")
    assert bad_cost.fields["errors"] == 1 and bad_cost.fields["samples"] == 0
    assert all(s.tags["run"] == "r1" for s in first)
    assert not any(s.tags.get("collector") == "slow" for s in second)
    assert sampler.stats.errors == 2
    fake_time[0] += 9.0
    sampler.tick()
    assert slow.calls == 2  # due again after its period


def test_sampler_thread_skips_ticks_instead_of_piling_up():
    slow = _Fake("slow", delay=0.25)
    got: list[list[Sample]] = []
    done = threading.Event()

    def on_samples(samples: list[Sample]) -> None:
        got.append(samples)
        if len(got) >= 3:
            done.set()

    started = time.monotonic()
    sampler = Sampler([slow], interval=0.1)
    sampler.samples.subscribe(on_samples)
    sampler.start()
    try:
        assert done.wait(5)
    finally:
        sampler.stop()
    elapsed = time.monotonic() - started
    assert sampler.stats.skipped_ticks >= 2
    assert slow.calls <= elapsed / 0.25 + 1  # never more calls than it had time for
    totals = [s for batch in got for s in batch if s.tags.get("collector") == "sampler"]
    assert sum(int(s.fields["skipped_ticks"]) for s in totals) >= 2
    assert all(s.fields["duration_ms"] >= 240 for s in totals)


def test_sampler_buffer_drops_oldest_and_counts():
    sampler = Sampler([_Fake("a")], interval=1.0, buffer=3)
    sampler._deliver(sampler.tick())  # 3 samples: fake, its cost, the sampler's
    sampler._deliver(sampler.tick())
    assert len(sampler.drain()) == 3 and sampler.stats.dropped == 3
    assert sampler.drain() == []


def test_shared_diag_socket_closes_with_its_last_user():
    left, right = socket.socketpair()
    try:
        diag = sd.InetDiag(left)
        assert diag.acquire() is diag
        diag.close()
        assert left.fileno() != -1  # one user left
        diag.close()
        assert left.fileno() == -1
    finally:
        left.close()
        right.close()
