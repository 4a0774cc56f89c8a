"""netem for real, on a kernel that has sch_netem (inside the QEMU VM here).

The kernel's state is read with iproute2's ``tc``/``ip`` (JSON), an oracle independent of the
pyroute2 code under test. Timings are generous: the guest CPU is 25-40x slower than the host.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_contract import Case, run_contract
from fault_lab import send_bytes, sink_server, tcp_counters
from netem_pair import B_IP, BULK_PORT, OTHER_PORT, PORT, Pair

from chaos.errors import FaultError
from chaos.faults.base import Handle
from chaos.faults.netem import Netem

RICH = {  # every option that goes into the qdisc, random loss
    "delay_ms": 50, "jitter_ms": 10, "delay_correlation": 25, "distribution": "normal",
    "loss": 30, "loss_correlation": 10, "duplicate": 1, "duplicate_correlation": 5,
    "reorder": 5, "reorder_correlation": 50, "gap": 3, "corrupt": 0.5, "rate_kbit": 10000,
    "limit": 500,
}  # fmt: skip
GEMODEL = {"delay_ms": 20, "gemodel": {"p": 1, "r": 25, "one_minus_h": 80, "one_minus_k": 2}}


def tc_json(ns: str, *args: str) -> Any:
    out = subprocess.run(
        ["tc", "-n", ns, "-j", *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out) if out.strip() else []


def observe(ns: str) -> dict[str, Any]:
    """Everything a netem fault may change in ``ns``: qdiscs, links (ifb), ingress filters."""
    links = json.loads(
        subprocess.run(
            ["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
    )
    return {
        "qdiscs": tc_json(ns, "qdisc", "show"),
        "links": sorted(link["ifname"] for link in links),
    }


def netem_options(ns: str, dev: str) -> dict[str, Any]:
    (found,) = [q for q in tc_json(ns, "qdisc", "show", "dev", dev) if q["kind"] == "netem"]
    return found["options"]


def is_applied(handle: Handle) -> bool:
    data = handle.data
    qdiscs = tc_json(data["netns"], "qdisc", "show")
    dev = data["ifb"] or data["ifname"]
    netem = any(q["kind"] == "netem" and q["dev"] == dev for q in qdiscs)
    redirected = any(q["kind"] == "ingress" and q["dev"] == data["ifname"] for q in qdiscs)
    return netem and (redirected or not data["ifb"])


def run_steps(handle: Handle, count: int) -> None:
    """Do the first ``count`` kernel changes of an apply, as an interrupted apply would."""
    from chaos.kernel import netns

    with netns.ipr(handle.data["netns"]) as ipr:
        for _what, step in itertools.islice(Netem.steps(handle), count):
            step(ipr)


@contextlib.contextmanager
def netem(pair: Pair, params: dict[str, Any]) -> Iterator[Handle]:
    fault = Netem.validate(pair.target(), params)
    handle = fault.prepare()
    try:
        fault.apply(handle)
        yield handle
    finally:
        Netem.revert(handle)


def approx(value: float) -> Any:
    return pytest.approx(value, abs=1e-6)


# --- the contract ---------------------------------------------------------------------------


CASES = {
    "egress": RICH,
    "egress-scoped": {"delay_ms": 100, "scope": {"address": B_IP, "port": PORT}},
    "ingress-scoped": {"delay_ms": 100, "direction": "ingress", "scope": {"port": PORT}},
}


@pytest.mark.parametrize("name", list(CASES))
def test_contract(name: str, pair: Pair, tmp_path: Path) -> None:
    params = CASES[name]

    def partial(handle: Handle) -> None:  # all but the last step
        run_steps(handle, len(list(Netem.steps(handle))) - 1)

    # A plain egress netem is one netlink request: there is no partial state to leave.
    case = Case(
        "netem",
        params,
        pair.target,
        lambda target: observe(target.netns),
        is_applied,
        partial if "scope" in params else None,
    )
    run_contract(case, tmp_path / "ledger")


def test_revert_after_every_partial_apply_step(pair: Pair) -> None:
    """Ingress with a scope has the longest apply (ifb, prio, netem, filter, ingress,
    redirect): stop after each step, as a SIGKILLed controller would, and revert."""
    before = observe(pair.a)
    fault = Netem.validate(pair.target(), CASES["ingress-scoped"])
    total = len(list(Netem.steps(fault.prepare())))
    assert total == 6
    for count in range(1, total + 1):
        handle = fault.prepare()
        try:
            run_steps(handle, count)
            assert observe(pair.a) != before, f"step {count} changed nothing"
        finally:
            Netem.revert(handle)
        assert observe(pair.a) == before, f"revert after {count} of {total} steps"


def test_kernel_reports_every_parameter(pair: Pair) -> None:
    with netem(pair, RICH):
        options = netem_options(pair.a, pair.link)
    assert options["limit"] == 500
    assert options["delay"] == {"delay": approx(0.05), "jitter": approx(0.01), "correlation": 0.25}
    assert options["loss-random"] == {"loss": approx(0.3), "correlation": approx(0.1)}
    assert options["duplicate"] == {"duplicate": approx(0.01), "correlation": approx(0.05)}
    assert options["reorder"] == {"reorder": approx(0.05), "correlation": approx(0.5)}
    assert options["gap"] == 3
    assert options["corrupt"] == {"corrupt": approx(0.005), "correlation": 0}
    assert options["rate"]["rate"] == 10_000_000 // 8  # bytes/s
    with netem(pair, GEMODEL):
        options = netem_options(pair.a, pair.link)
    assert options["loss-gemodel"] == {
        "p": approx(0.01), "r": approx(0.25), "1-h": approx(0.8), "1-k": approx(0.02),
    }  # fmt: skip
    assert "loss-random" not in options


def test_refuses_an_interface_that_already_has_a_root_qdisc(pair: Pair) -> None:
    with netem(pair, {"delay_ms": 10}):
        before = observe(pair.a)
        with pytest.raises(FaultError, match="configured root qdisc netem ca05:"):
            Netem.validate(pair.target(), {"loss": 5}).prepare()
        assert observe(pair.a) == before


# --- real effects ---------------------------------------------------------------------------


def test_delay_100ms_shows_in_connect_times(pair: Pair, record_property) -> None:
    with sink_server(pair.b, B_IP, PORT):
        baseline = pair.connect_ms()
        with netem(pair, {"delay_ms": 100}):
            delayed = pair.connect_ms()
        after = pair.connect_ms()
    record_property("connect_ms_baseline", round(baseline, 1))
    record_property("connect_ms_delay_100", round(delayed, 1))
    # The SYN waits 100 ms in a's egress; the SYN-ACK is not delayed.
    assert baseline < 50
    assert 95 <= delayed <= 400, delayed
    assert after < 50


def test_loss_30_percent_shows_in_retransmissions(pair: Pair, record_property) -> None:
    size = 150_000

    def retransmitted() -> tuple[int, int]:
        before = tcp_counters(pair.a)
        send_bytes(pair.a, B_IP, BULK_PORT, size, timeout=60)
        after = tcp_counters(pair.a)
        return after["RetransSegs"] - before["RetransSegs"], after["OutSegs"] - before["OutSegs"]

    with sink_server(pair.b, B_IP, BULK_PORT):
        clean, _ = retransmitted()
        with netem(pair, {"loss": 30}):
            lossy, sent = retransmitted()
    record_property("retrans_clean", clean)
    record_property("retrans_loss_30", lossy)
    record_property("out_segs_loss_30", sent)
    assert clean <= 2
    assert lossy >= 10 and lossy >= 0.05 * sent, (lossy, sent)


def test_scope_delays_only_the_matched_port(pair: Pair, record_property) -> None:
    scope = {"address": B_IP, "port": PORT}
    with (
        sink_server(pair.b, B_IP, PORT),
        sink_server(pair.b, B_IP, OTHER_PORT),
        netem(pair, {"delay_ms": 100, "scope": scope}),
    ):
        matched = pair.connect_ms(PORT)
        unmatched = pair.connect_ms(OTHER_PORT)
    record_property("connect_ms_scoped_matched", round(matched, 1))
    record_property("connect_ms_scoped_unmatched", round(unmatched, 1))
    assert 95 <= matched <= 400, matched
    assert unmatched < 50, unmatched


def test_ingress_delay_through_ifb(pair: Pair, record_property) -> None:
    with sink_server(pair.b, B_IP, PORT):
        with netem(pair, {"delay_ms": 100, "direction": "ingress"}) as handle:
            assert handle.data["ifb"] in observe(pair.a)["links"]
            delayed = pair.connect_ms()  # the SYN-ACK waits 100 ms on the way in
        after = pair.connect_ms()
    record_property("connect_ms_ingress_100", round(delayed, 1))
    assert 95 <= delayed <= 400, delayed
    assert after < 50
    assert not any(link.startswith("ifb-") for link in observe(pair.a)["links"])


def test_capability_probe_finds_netem() -> None:
    """`chaos doctor` and the schedule's pre-run check must see this kernel's netem."""
    from chaos import capabilities

    capabilities.require({"netem"})  # raises CapabilityError when the probe is wrong
