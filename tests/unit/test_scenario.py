"""Scenario model and loader: every problem reported at once, with path and line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from chaos.errors import ChaosError, ScenarioError
from chaos.load.options import LoadTlsTarget, user_options
from chaos.scenario import loader
from chaos.scenario.model import Scenario, parse_duration

FIVE_MISTAKES = textwrap.dedent("""\
    name: five
    duration: 10 parsecs
    lab:
      proxy:
        kind: envoy
        timeouts:
          conect: 5s
      origin:
        response_bytes: -1
    load:
      teardown: slam
    """)


def test_five_mistakes_are_all_reported_with_paths_and_lines():
    with pytest.raises(ScenarioError) as caught:
        loader.parse(FIVE_MISTAKES, "five.yaml")
    found = {(p.path, p.line) for p in caught.value.problems}
    assert found == {
        ("duration", 2),
        ("lab.proxy.kind", 5),
        ("lab.proxy.timeouts.conect", 7),
        ("lab.origin.response_bytes", 9),
        ("load.teardown", 11),
    }
    text = str(caught.value)
    assert "did you mean 'connect'?" in text
    assert "got 'envoy'" in text
    assert "five.yaml:7: lab.proxy.timeouts.conect" in text


def test_validate_cli_exits_2_and_reports_all(tmp_path):
    path = tmp_path / "five.yaml"
    path.write_text(FIVE_MISTAKES)
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "5 problems" in result.stderr
    for line in (2, 5, 7, 9, 11):
        assert f"five.yaml:{line}:" in result.stderr
    assert "Traceback" not in result.stderr


FAULT_MISTAKES = textwrap.dedent("""\
    name: faulty
    faults:
      - type: nft-filter
        target: origin
        params: {tcp_flags: bogus}
      - type: no-such
        target: origin
      - type: kill
        target: origin
        for: 5s
      - type: nft-mangle
        target: gateway
        params: {field: ack, xor: 1, set: 2}
      - type: sysctl
        target: http://198.18.3.2:7700/origin   # the agent checks these, before the run
        params: {anything: 1}
    variants:
      - name: worse
        patch:
          faults: [{type: nft-loss, target: client}]
    """)


def test_fault_types_params_and_timing_are_checked_without_a_lab():
    with pytest.raises(ScenarioError) as caught:
        loader.parse(FAULT_MISTAKES, "faulty.yaml")
    found = {p.path: (p.line, p.message) for p in caught.value.problems}
    assert set(found) == {
        "faults[0]", "faults[1]", "faults[2]", "faults[3]", "variants[0].patch -> faults[0]"
    }
    assert found["faults[0]"][0] == 3 and "tcp_flags" in found["faults[0]"][1]
    assert found["faults[1]"][0] == 6 and "unknown fault type 'no-such'" in found["faults[1]"][1]
    assert "nft-filter" in found["faults[1]"][1]  # the known types are listed
    assert "kill cannot be reverted" in found["faults[2]"][1]
    assert "give exactly one of xor and set" in found["faults[3]"][1]
    assert "probability" in found["variants[0].patch -> faults[0]"][1]
    assert "`chaos faults types`" in (caught.value.hint or "")


def test_yaml_syntax_error_has_a_line():
    with pytest.raises(ScenarioError) as caught:
        loader.parse("name: x\nlab: [unclosed\n", "bad.yaml")
    assert caught.value.problems[0].line is not None
    assert "YAML syntax" in caught.value.problems[0].message


def test_duplicate_keys_are_problems():
    with pytest.raises(ScenarioError) as caught:
        loader.parse("name: x\nduration: 5s\nduration: 6s\n", "dup.yaml")
    assert [(p.path, p.line) for p in caught.value.problems] == [("duration", 3)]


def test_non_mapping_scenario():
    with pytest.raises(ScenarioError, match="must be a YAML mapping"):
        loader.parse("- a\n- b\n", "list.yaml")


def test_cross_field_rules():
    with pytest.raises(ScenarioError, match="use proxy mode tcp"):
        loader.parse("name: x\nlab: {origin: {protocol: raw}}\n", "x.yaml")
    with pytest.raises(ScenarioError, match="needs close_after"):
        loader.parse("name: x\nlab: {origin: {close: server-after}}\n", "x.yaml")
    with pytest.raises(ScenarioError, match="needs address"):
        loader.parse("name: x\nlab: {proxy: {kind: external}}\n", "x.yaml")
    with pytest.raises(ScenarioError, match="not a per-namespace sysctl"):
        loader.parse("name: x\nlab: {client: {sysctls: {vm.swappiness: 1}}}\n", "x.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10),
        ("2m", 120),
        ("1h", 3600),
        (5, 5),
        ("1.5s", 1.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["ten", "-1s", True, "5 parsecs"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_builtins_are_valid_and_described():
    described = {item.name: item for item in loader.describe_builtins()}
    assert "smoke" in described
    for name, item in described.items():
        assert item.headline, f"builtin {name} needs a description"
        scenario = loader.load(name)
        assert isinstance(scenario, Scenario)
        assert item.controls == tuple(c.name for c in scenario.controls)


CONTROLLED = """
name: c
faults: [{type: stop, target: origin, at: 1s, for: 5s}]
expect:
  - {label: stopped, metric: tcp_states.close_wait, role: client, when: during, op: ">=", value: 1}
controls:
  - name: short-stop
    patch: {faults: [{type: stop, target: origin, at: 1s, for: 1s}]}
    fails: [stopped]
"""


def test_a_control_runs_like_a_variant_and_keeps_the_plain_signature():
    scenario = loader.parse(CONTROLLED, "c.yaml")
    control = loader.with_variant(scenario, "short-stop")
    assert control.variant == "short-stop" and control.controls == []
    assert control.faults[0].duration == 1.0
    assert control.expect == scenario.expect


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("fails: [stopped]", "fails: [no-such-clause]"), "not the label of any expectation"),
        (("fails: [stopped]", "fails: []"), "at least 1 item"),
        (("patch: {", "patch: {expect: [], "), "judged by the plain expectations"),
        (("short-stop", "x"), None),  # a valid name still
    ],
)
def test_bad_controls_are_named(change, message):
    text = CONTROLLED.replace(*change)
    if message is None:
        loader.parse(text, "c.yaml")
        return
    with pytest.raises(ScenarioError) as caught:
        loader.parse(text, "c.yaml")
    assert message in str(caught.value.problems), caught.value.problems


def test_variant_and_control_names_must_differ():
    text = CONTROLLED + "variants: [{name: short-stop}]\n"
    with pytest.raises(ScenarioError) as caught:
        loader.parse(text, "c.yaml")
    assert "names repeat" in str(caught.value.problems)


def test_unknown_scenario_name_lists_builtins():
    with pytest.raises(ChaosError) as caught:
        loader.locate("no-such-scenario")
    assert "smoke" in (caught.value.hint or "")


def test_schema_is_json_and_forbids_unknown_keys():
    schema = json.loads(loader.json_schema())
    assert schema["additionalProperties"] is False
    assert "lab" in schema["properties"]


def test_resolved_dump_round_trips():
    scenario = loader.load("smoke")
    again = loader.parse(loader.dump_resolved(scenario), "resolved")
    assert again == scenario


VARIANTS = """
name: t
lab:
  client: {sysctls: {net.ipv4.tcp_tw_reuse: 0}, addresses: 2}
expect:
  - {metric: tcp_states.time_wait, op: ">=", value: 10}
variants:
  - name: reuse
    description: TIME_WAIT reuse on the connecting side
    patch:
      lab: {client: {sysctls: {net.ipv4.tcp_tw_reuse: 1}}}
      expect: []
"""


def test_variant_patch_merges_mappings_and_replaces_lists():
    from chaos.scenario.loader import with_variant

    base = loader.parse(VARIANTS, "<t>")
    patched = with_variant(base, "reuse")
    assert patched.lab.client.sysctls == {"net.ipv4.tcp_tw_reuse": 1}
    assert patched.lab.client.addresses == 2  # untouched keys survive the merge
    assert patched.expect == [] and patched.variant == "reuse" and patched.variants == []
    assert base.lab.client.sysctls == {"net.ipv4.tcp_tw_reuse": 0}


def test_variant_errors_name_the_variant_and_line():
    text = VARIANTS + "  - name: typo\n    patch: {load: {usres: 3}}\n"
    with pytest.raises(ScenarioError) as err:
        loader.parse(text, "<t>")
    assert "<t>:13: variants[1].patch -> load.usres: unknown key 'usres'" in str(err.value)


def test_unknown_variant_lists_the_known_ones():
    from chaos.errors import ChaosError
    from chaos.scenario.loader import with_variant

    with pytest.raises(ChaosError) as err:
        with_variant(loader.parse(VARIANTS, "<t>"), "nope")
    assert "its variants: reuse" in err.value.hint


def test_a_sysctl_newer_than_the_kernel_is_a_capability_not_a_typo(monkeypatch):
    from chaos.errors import CapabilityError, SysctlError
    from chaos.kernel import netns

    monkeypatch.setitem(netns.SYSCTL_SINCE, "net.ipv4.tcp_from_the_future", "99.1")
    with pytest.raises(CapabilityError) as caught:
        netns.sysctl_get(None, "net.ipv4.tcp_from_the_future")
    assert "needs Linux 99.1 or later" in caught.value.message
    assert caught.value.exit_code == 4
    with pytest.raises(SysctlError, match="unknown sysctl"):
        netns.sysctl_get(None, "net.ipv4.tcp_no_such_knob")


def test_the_load_speaks_tls_when_the_proxy_does_and_says_how():
    plain = loader.parse("name: x\n", "x.yaml")
    assert plain.load_tls is None
    tls = loader.parse("name: x\nlab: {proxy: {tls: true}}\n", "x.yaml")
    assert tls.load_tls is not None and not tls.load_tls.resumption
    assert tls.load_tls.close_notify
    chosen = loader.parse(
        "name: x\nlab: {proxy: {tls: true}}\nload: {tls: {resumption: on, close_notify: off}}\n",
        "x.yaml",
    )
    assert chosen.load_tls is not None and chosen.load_tls.resumption
    args = user_options(
        chosen.load, "http", [], 1, LoadTlsTarget(chosen.load_tls, "/run/ca.crt", "198.18.2.2")
    )
    assert args[args.index("--tls-ca") + 1] == "/run/ca.crt"
    assert {"--tls", "--tls-resumption", "--tls-no-close-notify"} <= set(args)
    assert loader.parse(
        "name: x\nlab: {proxy: {tls: true}}\nload: {tls: false}\n", "x.yaml"
    ).load_tls is None
    # a remote target's TLS is the scenario's to say (no lab proxy to follow)
    remote = loader.parse("name: x\nremote: {target: '198.18.2.2:443'}\nload: {tls: true}\n", "x")
    assert remote.load_tls is not None and remote.load_tls.ca is None


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        # the HTTP user through a TLS proxy: refused at its own line
        ("lab: {proxy: {tls: true}}\nload:\n  user: http\n", 4, "needs user: raw"),
        ("load:\n  user: http\n  tls: {}\n", 4, "does not honour tls"),
        ("lab: {proxy: {tls: true}}\nload: {teardown: half-close}\n", None, "half-close with TLS"),
        ("load: {tls: true}\n", None, "does not terminate TLS"),
    ],
)
def test_tls_the_load_cannot_do_is_refused(text, line, message):
    with pytest.raises(ScenarioError) as caught:
        loader.parse("name: x\n" + text, "x.yaml")
    (problem,) = caught.value.problems
    assert message in problem.message
    if line is not None:
        assert problem.line == line


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "lab:\n  proxy: {mode: tcp}\n  origin:\n    protocol: raw\n    tls: true\n",
            6,
            "needs proxy mode http",
        ),
        ("lab:\n  origin: {tls: true, read_rate: 100}\n", 3, "plain TCP only"),
    ],
)
def test_origin_tls_the_lab_cannot_do_is_refused(text, line, message):
    with pytest.raises(ScenarioError) as caught:
        loader.parse("name: x\n" + text, "x.yaml")
    (problem,) = caught.value.problems
    assert message in problem.message
    assert problem.line == line


def test_origin_tls_is_not_a_key_of_the_origins_own_config():
    spec = loader.parse("name: x\nlab: {origin: {tls: true}}\n", "x.yaml").lab.origin
    assert spec.tls and "tls" not in spec.server_config()  # the lab adds the files it made
