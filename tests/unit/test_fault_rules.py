"""Pure parts of the fault controller: nft rule text and the schedule's timelines."""

from __future__ import annotations

import itertools

import pytest

from chaos.errors import FaultError
from chaos.faults.base import Target
from chaos.faults.engine.schedule import _check_timing, _step_params, _Timeline
from chaos.faults.nft import (
    FilterParams,
    LossParams,
    MangleParams,
    parse_tcp_flags,
    rule_text,
    table_script,
)
from chaos.faults.signals import Kill, SignalParams, Stop
from chaos.scenario.model import FaultSpec


def test_seed_001_rule_and_presets():
    params = FilterParams(action="reject", tcp_flags="ACK,FIN ACK", direction="output")
    assert rule_text(params) == (
        "meta l4proto tcp tcp flags & (ack|fin) == ack reject with icmpx type port-unreachable"
    )
    assert parse_tcp_flags("syn") == (["syn", "ack"], ["syn"])
    assert parse_tcp_flags("pure-ack") == (["syn", "fin", "rst", "psh", "ack"], ["ack"])
    assert parse_tcp_flags("fin,ack none") == (["fin", "ack"], [])


def test_filter_rule_has_every_condition_and_numgen_last():
    params = FilterParams(
        saddr="198.18.1.0/24", daddr="2001:db8::1", dport="8000-8100", probability=12.5
    )
    assert rule_text(params) == (
        "meta l4proto tcp tcp dport 8000-8100 ip saddr 198.18.1.0/24 ip6 daddr 2001:db8::1 "
        "numgen random mod 10000 < 1250 drop"
    )
    script = table_script("chaos_x", LossParams(probability=30, direction=["input", "forward"]))
    assert script.count("numgen random mod 10000 < 3000 drop") == 2
    assert "hook input" in script and "hook forward" in script and "hook output" not in script


def test_mangle_rewrites_and_accepts_in_a_mangle_chain():
    params = MangleParams(field="ack", xor=0x40000000, tcp_flags="psh,ack psh,ack", dport=8080)
    assert rule_text(params) == (
        "meta l4proto tcp tcp flags & (psh|ack) == psh|ack tcp dport 8080 "
        "tcp ackseq set tcp ackseq ^ 0x40000000"
    )
    script = table_script("chaos_x", params)
    assert "hook forward priority mangle;" in script  # a middlebox rewrites what it routes
    assert rule_text(MangleParams(field="seq", set=7, direction="input")) == (
        "meta l4proto tcp tcp sequence set 7"
    )


@pytest.mark.parametrize(
    "params",
    [
        {"field": "ack"},  # neither xor nor set
        {"field": "ack", "xor": 1, "set": 2},
        {"field": "ack", "xor": 0},
        {"field": "ack", "set": 2**32},
        {"field": "window", "xor": 1},
    ],
)
def test_bad_mangle_params_are_refused(params):
    with pytest.raises(ValueError):
        MangleParams.model_validate(params)


@pytest.mark.parametrize(
    "params",
    [
        {"tcp_flags": "ack"},
        {"tcp_flags": "ack fin"},
        {"direction": ["input", "input"]},
        {"direction": "sideways"},
        {"sport": "9-1"},
        {"probability": 0},
    ],
)
def test_bad_filter_params_are_refused(params):
    with pytest.raises(ValueError):
        FilterParams.model_validate(params)


def _spec(**fields) -> FaultSpec:
    return FaultSpec.model_validate({"type": "stop", "target": "origin", **fields})


def _timeline(spec: FaultSpec, steps: int = 1, cls=Stop) -> _Timeline:
    fault = cls(Target("origin", "ns", pids=(1,)), SignalParams())
    return _Timeline(0, spec, [fault] * steps)


def test_timeline_every_for_and_ramp():
    every = _timeline(_spec(at=1, every=5, **{"for": 2}))
    assert list(itertools.islice(every.actions(), 4)) == [
        (1.0, "apply", 0, 0),
        (3.0, "revert", -1, 0),
        (6.0, "apply", 0, 1),
        (8.0, "revert", -1, 1),
    ]
    ramp = _timeline(_spec(**{"for": 3}), steps=3)
    assert [a[:3] for a in ramp.actions()] == [
        (0.0, "apply", 0),
        (1.0, "apply", 1),
        (2.0, "apply", 2),
        (3.0, "revert", -1),
    ]
    kills = _timeline(_spec(every=2), cls=Kill)
    assert [a[:2] for a in itertools.islice(kills.actions(), 2)] == [(0.0, "apply"), (2.0, "apply")]
    assert list(_timeline(_spec()).actions()) == [(0.0, "apply", 0, 0)]


def test_ramp_params_and_timing_rules():
    spec = _spec(params={"probability": 5, "ramp": [{}, {"probability": 9}]}, **{"for": 1})
    assert _step_params(spec) == [{"probability": 5}, {"probability": 9}]
    with pytest.raises(FaultError, match="ramp must be"):
        _step_params(_spec(params={"ramp": {"probability": 1}}))
    with pytest.raises(FaultError, match="needs `for`"):
        _check_timing(_spec(every=1), True, 1)
    with pytest.raises(FaultError, match="cannot be reverted"):
        _check_timing(_spec(**{"for": 1}), False, 1)
    _check_timing(_spec(every=1, **{"for": 1}), True, 2)
