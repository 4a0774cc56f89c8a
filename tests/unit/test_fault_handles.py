"""Each fault type's typed handle model reads the ledger entries runs have always written
(the on-disk format is unchanged: a ledger left by a crashed run of an older version still
reverts with ``chaos revert-all``), and writes them back key for key."""

from __future__ import annotations

import pytest

from chaos.faults.base import Fault, Handle, HandleData, Target
from chaos.faults.registry import LEDGER_TYPES, fault_type

GONE_NS = "chaos-t-handles-no-such-namespace"
KEY = "net.ipv4.tcp_fin_timeout"

#: one ledger handle per kind, as runs wrote them before the handles were typed
OLD_HANDLES: dict[str, dict] = {
    "netem": {
        "netns": GONE_NS,
        "ifname": "veth-c0",
        "ifindex": 7,
        "direction": "egress",
        "root_before": {"kind": "noqueue", "handle": 0},
        "ingress_before": None,
        "root_handle": 0xCA050000,
        "netem_handle": 0xCA050000,
        "params": {"delay": "50ms", "direction": "egress"},
        "u32_keys": None,
        "ifb": None,
    },
    "nft-filter": {
        "netns": GONE_NS,
        "table": "chaos_0123456789ab",
        "script": "add table inet chaos_0123456789ab\n",
    },
    "sysctl": {
        "netns": GONE_NS,
        "values": {"net.ipv4.tcp_fin_timeout": "5"},
        "previous": {"net.ipv4.tcp_fin_timeout": "60"},
    },
    "stop": {
        "processes": [{"pid": 2**22 + 1, "started": 12345, "state": "S"}],
        "settle": 2.0,
    },
    "reload": {"pid": 2**22 + 1, "started": 12345, "proxy": "haproxy", "workers": [2], "settle": 5},
    "remote": {
        "agent": "http://198.18.3.2:7700",
        "remote_target": "origin",
        "type": "stop",
        "token_env": "CHAOS_AGENT_TOKEN",
        "ca_file": None,
        "lease_s": 10.0,
    },
}


def old_handle(kind: str) -> Handle:
    entry = {"kind": kind, "target": "origin", "data": OLD_HANDLES[kind], "id": "0123456789ab"}
    return Handle.from_json(entry)


@pytest.mark.parametrize("kind", sorted(OLD_HANDLES))
def test_an_old_ledger_handle_reads_typed_and_writes_back_unchanged(kind):
    cls = fault_type(kind)
    state = cls.handle_model.of(old_handle(kind))
    assert state.model_dump(mode="json") == OLD_HANDLES[kind]


def test_every_fault_type_has_a_handle_model_of_its_own():
    for cls in LEDGER_TYPES:
        assert issubclass(cls.handle_model, HandleData) and cls.handle_model is not HandleData
    # each model has an old ledger handle above: a new one must add its own
    assert {c.handle_model for c in LEDGER_TYPES} == {
        fault_type(k).handle_model for k in OLD_HANDLES
    }


@pytest.mark.parametrize("kind", ["netem", "nft-filter", "sysctl", "stop", "kill", "reload"])
def test_an_old_ledger_handle_reverts_when_what_it_changed_is_gone(kind):
    # The namespace is gone, the pid belongs to no process: revert reads every typed field
    # it needs and finds nothing left to undo (no root needed).
    data = OLD_HANDLES.get(kind) or OLD_HANDLES["stop"]
    cls: type[Fault] = fault_type(kind)
    cls.revert(Handle(kind=kind, target="origin", data=dict(data), id="0123456789ab"))


def test_a_stacked_sysctl_keeps_the_original_of_the_oldest_holder():
    sysctl = fault_type("sysctl")
    older = old_handle("sysctl")
    newer = Handle(
        kind="sysctl",
        target="origin",
        data={**OLD_HANDLES["sysctl"], "previous": {KEY: "5"}},
    )
    fault = sysctl(Target("origin", GONE_NS), sysctl.parse_params({"values": {KEY: 5}}))
    fault.stack_on(newer, [older])
    assert newer.data["previous"] == {KEY: "60"}
