"""A fault's params are parsed once: the loader's offline check keeps the fault type's
params models on the spec, and every later stage (variants, overlap warnings, the
schedule's validation) reads them back instead of parsing ``params`` again."""

from __future__ import annotations

import pytest

from chaos.faults.base import Fault
from chaos.faults.engine.schedule import overlap_warnings, parsed_steps
from chaos.faults.sysctl import SysctlParams
from chaos.scenario import loader
from chaos.scenario.model import FaultSpec

SCENARIO = """\
name: parsed-once
duration: 20s
faults:
  - type: sysctl
    target: origin
    at: 1s
    for: 6s
    params:
      values: {net.ipv4.tcp_fin_timeout: 10}
      ramp: [{}, {values: {net.ipv4.tcp_fin_timeout: 20}}]
  - type: sysctl
    target: origin
    at: 4s
    for: 5s
    params: {values: {net.ipv4.tcp_fin_timeout: 30}}
  - type: stop
    target: http://198.18.3.2:7700/origin
    at: 2s
variants:
  - name: later
    patch: {duration: 30s}
  - name: other-faults
    patch: {faults: [{type: stop, target: origin, at: 3s, for: 1s}]}
"""


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every params parse from here on."""
    seen: list[str] = []
    original = Fault.parse_params.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Fault], raw: dict, where: str = ""):  # type: ignore[no-untyped-def]
        seen.append(cls.kind)
        return original(cls, raw, where)

    monkeypatch.setattr(Fault, "parse_params", classmethod(counting))
    return seen


def test_the_loader_parses_each_step_once_and_later_stages_reuse_it(parses):
    scenario = loader.parse(SCENARIO, "parsed-once")
    # two ramp steps and a plain fault; the variant's own fault (checked, on its own copy)
    assert parses == ["sysctl", "sysctl", "sysctl", "stop"]
    first, _, remote = scenario.faults
    steps = parsed_steps(first)
    assert steps is first.parsed
    assert [s.values for s in steps] == [  # type: ignore[attr-defined]
        {"net.ipv4.tcp_fin_timeout": 10},
        {"net.ipv4.tcp_fin_timeout": 20},
    ]
    assert all(isinstance(s, SysctlParams) for s in steps)
    assert parsed_steps(remote) is None  # an agent parses its own
    assert len(overlap_warnings(scenario.faults, scenario.duration)) == 1
    later = loader.with_variant(scenario, "later")
    assert later.faults[0] is first
    assert parses == ["sysctl", "sysctl", "sysctl", "stop"]  # nothing parsed again


def test_a_spec_not_yet_parsed_is_parsed_on_first_use_and_kept(parses):
    scenario = loader.parse(SCENARIO, "parsed-once")
    patched = loader.with_variant(scenario, "other-faults").faults[0]
    parses.clear()
    assert patched.parsed is None
    steps = parsed_steps(patched)
    assert parsed_steps(patched) is steps
    assert parses == ["stop"]


def test_the_parsed_cache_is_not_part_of_the_specs_value():
    parsed = loader.parse(SCENARIO, "parsed-once").faults[0]
    fresh = FaultSpec.model_validate(parsed.model_dump(by_alias=True))
    assert fresh.parsed is None and parsed.parsed is not None
    assert fresh == parsed
    assert fresh.model_dump() == parsed.model_dump()
