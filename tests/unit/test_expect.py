"""Expectations: phases from the journal, series from samples, aggregates and expressions."""

from __future__ import annotations

import pytest

from chaos.errors import ScenarioError
from chaos.expect import Timeline, evaluate, run_timeline
from chaos.record.point import Sample
from chaos.scenario.expression import check_expression, evaluate_expression
from chaos.scenario.loader import parse
from chaos.scenario.model import Scenario

T0 = 1_700_000_000.0


def journal(apply_at: float = 10, revert_at: float = 20, end: float = 40) -> list[dict]:
    return [
        {"ts": T0, "event": "load.start"},
        {"ts": T0 + apply_at, "event": "fault.apply", "id": "f1", "kind": "stop", "spec": 0},
        {"ts": T0 + revert_at, "event": "fault.revert", "id": "f1", "kind": "stop"},
        {"ts": T0 + end, "event": "load.end"},
    ]


def close_wait_series(role: str = "client") -> list[Sample]:
    """CLOSE_WAIT: 2 before the fault, 100 during it, back to 3 by t=25."""
    points = []
    for second in range(0, 41):
        value = 2 if second < 10 else 100 if second <= 20 else (50 if second < 25 else 3)
        for netns, share in (("a", value), ("b", 0)):
            points.append(
                Sample(
                    "tcp_states",
                    {"role": role, "netns": netns, "family": "all"},
                    {"close_wait": share, "established": 7},
                    int((T0 + second) * 1e9),
                )
            )
        # a per-family point that must not be double counted
        points.append(
            Sample("tcp_states", {"role": role, "netns": "a", "family": "ipv4"},
                   {"close_wait": 999}, int((T0 + second) * 1e9))
        )
    return points


def scenario(expect: str) -> Scenario:
    text = f"""
name: t
faults:
  - {{type: stop, target: origin, at: 10s, for: 10s}}
expect:
{expect}
"""
    return parse(text, "<test>")


def verdicts(expect: str):
    return evaluate(scenario(expect), close_wait_series(), Timeline.from_journal(journal()))


def test_phases_aggregate_their_own_windows():
    result = verdicts("""
  - {metric: tcp_states.close_wait, op: "<=", value: 5, when: baseline, role: client}
  - {metric: tcp_states.close_wait, op: ">=", value: 100, when: during, role: client}
  - {metric: tcp_states.close_wait, op: "<=", value: "baseline + 1", when: after,
     within: 30s, agg: last, role: client}
""")
    assert [v.observed for v in result] == [2, 100, 3]
    assert [v.threshold for v in result] == [5, 100, 3]
    assert all(v.passed for v in result), [v.describe() for v in result]


def test_failing_and_missing_data_fail():
    result = verdicts("""
  - {metric: tcp_states.close_wait, op: "<=", value: 10, when: after, within: 3s}
  - {metric: tcp_states.time_wait, op: ">=", value: 0}
  - {metric: tcp_states.close_wait, op: ">=", value: 1, role: origin}
""")
    assert result[0].observed == 100 and not result[0].passed  # the revert sample itself
    assert not result[1].passed and result[1].observed is None
    assert "no tcp_states.time_wait samples" in result[1].detail
    assert not result[2].passed  # the origin has no points


def test_sum_counts_deltas_and_expressions_see_the_scenario():
    points = [
        Sample("tcp_counters", {"role": "proxy", "netns": "p"}, {"TCPSynRetrans": 3},
               int((T0 + s) * 1e9))
        for s in range(40)
    ]
    sc = parse("""
name: t
load: {rate: 50}
expect:
  - {metric: tcp_counters.TCPSynRetrans, op: ">=", value: "rate * 2.4", agg: sum}
""", "<t>")
    [v] = evaluate(sc, points, Timeline.from_journal(journal()))
    assert v.observed == 120 and v.threshold == 120 and v.passed


@pytest.mark.parametrize(
    "bad",
    ["__import__('os')", "rate ** 2", "ports", "'a'", "lambda: 1", "open('x')"],
)
def test_expressions_are_checked(bad):
    with pytest.raises(ValueError):
        check_expression(bad)


def test_expression_arithmetic():
    assert evaluate_expression("max(rate * 0.9, 10) - -1", {"rate": 100}) == 91


def test_phase_needs_a_fault():
    with pytest.raises(ScenarioError) as err:
        parse("""
name: t
expect:
  - {metric: tcp_states.close_wait, op: "<=", value: 1, when: after}
""", "<t>")
    assert "has no faults" in str(err.value)


def test_unknown_name_is_a_scenario_error_with_its_line():
    with pytest.raises(ScenarioError) as err:
        parse("""
name: t
expect:
  - metric: tcp_states.close_wait
    op: "<="
    value: "ports * 2"
""", "<t>")
    assert "unknown name 'ports'" in str(err.value)


def test_timeline_kill_is_an_instant_and_ramp_steps_one_window():
    events = [
        {"ts": T0, "event": "load.start"},
        # a ramp: two steps of spec 0, window 0
        {"ts": T0 + 5, "event": "fault.apply", "id": "a", "spec": 0, "window": 0, "step": 0,
         "apply_ms": 1000.0},
        {"ts": T0 + 10, "event": "fault.revert", "id": "a"},
        {"ts": T0 + 10, "event": "fault.apply", "id": "b", "spec": 0, "window": 0, "step": 1},
        {"ts": T0 + 15, "event": "fault.revert", "id": "b"},
        # a kill: irreversible, no revert event
        {"ts": T0 + 20, "event": "fault.apply", "id": "k", "spec": 1, "window": 0,
         "reversible": False},
        # never reverted
        {"ts": T0 + 25, "event": "fault.apply", "id": "n", "spec": 2, "window": 0},
        {"ts": T0 + 40, "event": "load.end"},
    ]
    timeline = Timeline.from_journal(events)
    assert [(w.spec, w.applied - T0, w.reverted - T0) for w in timeline.faults] == [
        (0, 4.0, 15.0),  # the apply began apply_ms before its event
        (1, 20.0, 20.0),
        (2, 25.0, 40.0),
    ]


def test_phases_stop_where_the_load_stopped_issuing_connections() -> None:
    """The load started its last connection in second 29; Locust stopped its users and the
    sockets drained until load.end at 40. ``end``, ``after`` and ``during`` stop at 30."""
    load = [Sample("load", {"role": "client"}, {"started": 50 if s < 30 else 0, "failed": 0},
                   int((T0 + s) * 1e9)) for s in range(0, 38)]  # fmt: skip
    drained = [
        Sample("tcp_states", {"role": "client", "netns": "a", "family": "all"},
               {"close_wait": 7 if s < 30 else 0}, int((T0 + s) * 1e9))
        for s in range(0, 41)
    ]
    timeline = run_timeline(journal(apply_at=10, revert_at=35, end=40), [*load, *drained])
    assert timeline.end == T0 + 30
    expect = """
  - {metric: tcp_states.close_wait, role: client, when: end, agg: last, op: "==", value: 7}
  - {metric: tcp_states.close_wait, role: client, when: during, agg: min, op: ">=", value: 7}
  - {metric: tcp_states.close_wait, role: client, when: after, op: ">=", value: 0}
  - {metric: load.started, when: end, agg: sum, op: "==", value: 1500}
"""
    end, during, after, started = evaluate(scenario(expect), [*load, *drained], timeline)
    assert end.passed and end.observed == 7  # not the drained 0 after the stop
    assert during.passed and during.detail == "20 samples"  # [10, 30): cut at the stop
    assert not after.passed and "no tcp_states.close_wait samples" in after.detail
    assert started.passed  # the 30 seconds that issued connections, 50 each
    # without a load series, the journal's load.end ends the phases, as before
    assert run_timeline(journal(end=40), drained).end == T0 + 40


def test_phases_start_where_the_load_started_issuing_connections() -> None:
    """The master logged load.start at T0, the workers' first connection came in second 3:
    the baseline holds the seconds with load only."""
    load = [Sample("load", {"role": "client"}, {"started": 50 if s >= 3 else 0},
                   int((T0 + s) * 1e9)) for s in range(0, 30)]  # fmt: skip
    timeline = run_timeline(journal(apply_at=10, revert_at=20, end=40), load)
    assert (timeline.start, timeline.end) == (T0 + 3, T0 + 30)
    expect = """
  - {metric: load.started, when: baseline, agg: min, op: ">=", value: 50}
"""
    [baseline] = evaluate(scenario(expect), load, timeline)
    assert baseline.passed and baseline.detail == "7 samples"  # seconds 3..9
