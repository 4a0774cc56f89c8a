"""netem parameters and their encoding, without a kernel (these run on the host)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from chaos.errors import FaultError
from chaos.faults.base import Target
from chaos.faults.netem import NetemParams as P
from chaos.faults.netem import _NetemQdiscMsg, distribution_table, netem_options
from chaos.faults.registry import fault_type

TARGET = Target("client", "chaos-x-client", ("veth0",))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "at least one effect"),
        ({"jitter_ms": 5, "loss": 1}, "jitter_ms needs delay_ms"),
        ({"delay_ms": 5, "distribution": "pareto"}, "distribution needs jitter_ms"),
        ({"loss": 1, "gemodel": {"p": 1}}, "exclude each other"),
        ({"reorder": 5}, "reorder needs delay_ms"),
        ({"delay_ms": 5, "gap": 2}, "gap and reorder_correlation need reorder"),
        ({"loss": 101}, "less than or equal to 100"),
        ({"delay_ms": 1, "scope": {}}, "a scope needs an address, a port, or both"),
        ({"delay_ms": 1, "scope": {"address": "2001:db8::1"}}, "IPv4"),
        ({"delay_ms": 1, "interface": "eth9"}, "no interface 'eth9'"),
        ({"delay_ms": 1, "dealy_ms": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_params_are_one_clear_error(params, message):
    with pytest.raises(FaultError, match=message):
        fault_type("netem").validate(TARGET, params)


def test_the_host_namespace_is_refused():
    with pytest.raises(FaultError, match="host namespace"):
        fault_type("netem").validate(Target("host", None, ("eth0",)), {"delay_ms": 1})


def test_options_encode_what_tc_would_send():
    options = netem_options(P(delay_ms=100, jitter_ms=10, reorder=5, rate_kbit=40_000_000))
    attrs = {name: value for name, value in options["attrs"]}
    assert options["latency"] == 100_000_000 >> 6  # psched ticks of 64 ns
    assert attrs["TCA_NETEM_LATENCY64"] == 100_000_000
    assert options["gap"] == 1  # reorder without gap: tc's default
    assert attrs["TCA_NETEM_RATE"]["rate"] == 0xFFFFFFFF  # saturated; the 64-bit rate wins
    assert attrs["TCA_NETEM_RATE64"] == 5_000_000_000
    ge = netem_options(P(gemodel={"p": 1, "r": 25}))["attrs"][-1][1]["attrs"][0][1]
    assert ge["h"] == 0  # 1-h defaults to 100 %: every packet in the bad state is lost


def test_the_message_round_trips_through_its_own_decoder():
    msg = _NetemQdiscMsg()
    options = netem_options(P(delay_ms=50, jitter_ms=5, distribution="normal", corrupt=1))
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", options]]
    msg.encode()
    decoded = _NetemQdiscMsg(msg.data)
    decoded.decode()
    got = decoded.get_attr("TCA_OPTIONS")
    assert got["latency"] == options["latency"]
    assert got.get_attr("TCA_NETEM_CORRUPT")["probability"] == round(0.01 * 0xFFFFFFFF)
    assert len(got.get_attr("TCA_NETEM_DELAY_DIST")) == 4096 * 2


@pytest.mark.parametrize("name", ["normal", "pareto", "paretonormal"])
def test_distribution_tables_match_iproute2(name):
    """The tables are computed, not read from iproute2's data files; where those files exist
    they agree to within one unit (1/8192 of a standard deviation)."""
    files = sorted(Path("/usr/lib").glob(f"*/tc/{name}.dist")) + sorted(
        Path("/usr/lib/tc").glob(f"{name}.dist")
    )
    table = distribution_table(name)
    assert len(table) == 4096 and all(-32768 <= v <= 32767 for v in table)
    if not files:
        pytest.skip(f"iproute2's {name}.dist is not installed to compare with")
    text = files[0].read_text()
    rows = [line.split() for line in text.splitlines() if not line.startswith("#")]
    reference = [int(v) for values in rows for v in values]
    assert max(abs(a - b) for a, b in zip(reference, table, strict=True)) <= 1
    assert struct.calcsize(f"{len(table)}h") == 8192
