"""Sweep arithmetic without a lab: rates, steps on the load series' clock, the knee, what ran
out first (and when it was the load generator), the p99 criterion, early stop."""

from __future__ import annotations

from pathlib import Path

import pytest
from load_series import SECOND_NS, Second, load_samples, write_run

from chaos.errors import ChaosError
from chaos.load.series import series_path
from chaos.record.point import Sample
from chaos.scenario.model import Scenario
from chaos.sweep import (
    GENERATOR,
    EarlyStop,
    Step,
    _exhausted,
    analyse,
    conclude,
    generator_saturated,
    parse_rates,
)


def test_rates_from_a_list_or_a_range() -> None:
    assert parse_rates("500, 1000,2000", None, None, None) == [500, 1000, 2000]
    assert parse_rates(None, 100, 400, 100) == [100, 200, 300, 400]
    assert parse_rates(None, 100, 350, 100) == [100, 200, 300]
    for bad in (("1,x", None, None, None), ("2,1", None, None, None), (None, 5, 1, 1),
                (None, 1, 5, None), ("1", 1, 5, 1), (None, 1, 1000, 1)):  # fmt: skip
        with pytest.raises(ChaosError) as info:
            parse_rates(*bad)
        assert info.value.hint


def step(target: float, **kw: object) -> Step:
    s = Step(target=target, start=0, end=1, seconds=1, achieved=target)
    for key, value in kw.items():
        setattr(s, key, value)
    s.exhausted = _exhausted(s)
    s.saturated = generator_saturated(s)
    s.passed = not (s.failures or s.achieved < 0.9 * target)
    s.why = "" if s.passed else "broke"
    return s


def test_knee_is_the_last_step_before_the_first_break() -> None:
    steps = [
        step(100, ports=0.2),
        step(200, ports=0.6, tw_overflow=3),
        step(400, ports=1.0, failures=10, classes={"EADDRNOTAVAIL": 10}),
        step(800),
    ]
    result = conclude("s", 5, steps, 0)
    assert result.knee == 200 and not result.lower_bound
    # TIME_WAIT buckets overflowed first (at 200, still sustained), before ports ran out
    assert result.first_exhausted == "time_wait_buckets"


def test_a_short_rate_without_evidence_names_nothing() -> None:
    # the origin's CPU at 50 %, the proxy's at 60 %: below their thresholds, not exhausted
    result = conclude("s", 5, [step(100), step(200, achieved=120.0, origin_cpu=0.5,
                                                   proxy_cpu=0.6, generator_cpu=0.4,
                                                   host_idle=0.5)], 0)  # fmt: skip
    assert (result.knee, result.first_exhausted) == (100, None)
    assert "no resource indicator fired" in result.evidence
    assert "origin" not in result.verdict + result.evidence
    assert "proxy" not in result.verdict + result.evidence


def test_a_saturated_generator_is_the_limit_and_the_knee_a_lower_bound() -> None:
    steps = [step(1000, generator_cpu=0.6, generator_process="locust-worker", host_idle=0.3),
             step(2000, generator_cpu=0.8, generator_process="locust-worker", host_idle=0.1),
             step(4000, achieved=2900.0, generator_cpu=0.97, generator_process="locust-worker",
                  host_idle=0.0, origin_cpu=0.3, proxy_cpu=0.4)]  # fmt: skip
    result = conclude("s", 5, steps, 0)
    assert result.knee == 2000 and result.first_exhausted == GENERATOR and result.lower_bound
    assert result.verdict.startswith("load generator saturated (busiest locust-worker 97% of")
    assert "at 4,000/s: the knee is a lower bound; knee 2000/s" in result.verdict
    assert "locust-worker 97% of its core" in result.evidence
    assert "origin" not in result.verdict and "proxy" not in result.verdict


def test_the_host_without_idle_time_is_a_saturated_generator() -> None:
    assert generator_saturated(step(1, generator_cpu=0.5, host_idle=0.02))
    assert generator_saturated(step(1, host_idle=0.5, host_steal=0.2))
    assert not generator_saturated(step(1, generator_cpu=0.5, host_idle=0.4))
    assert not generator_saturated(step(1))  # nothing measured: no claim
    result = conclude("s", 5, [step(100, host_idle=0.3), step(200, achieved=100.0,
                                                               host_idle=0.01)], 0)  # fmt: skip
    assert result.first_exhausted == GENERATOR and "host saturated (1% idle)" in result.evidence


def test_evidence_of_the_system_wins_and_saturation_is_still_said() -> None:
    steps = [step(100), step(200, failures=9, classes={"EADDRNOTAVAIL": 9}, ports=1.0,
                              ports_role="proxy", generator_cpu=0.95,
                              generator_process="locust-worker")]  # fmt: skip
    result = conclude("s", 5, steps, 0)
    assert result.first_exhausted == "ports" and not result.lower_bound
    assert "(load generator saturated (busiest locust-worker 95%" in result.verdict
    assert result.verdict.endswith("at 200/s too)")


def test_no_knee_when_the_first_step_breaks_or_none_does() -> None:
    assert conclude("s", 5, [step(100, failures=1)], 0).knee is None
    held = conclude("s", 5, [step(100), step(200)], 0)
    assert held.knee is None and "above 200" in held.verdict


def test_cpu_and_conntrack_indicators() -> None:
    assert _exhausted(step(1, proxy_cpu=0.95)) == ["proxy_cpu"]
    assert _exhausted(step(1, conntrack=0.2, conntrack_errors=4)) == ["conntrack"]
    assert _exhausted(step(1, origin_cpu=0.97)) == ["origin"]
    assert _exhausted(step(1, classes={"SlowConnect": 3})) == ["ports"]
    assert _exhausted(step(1, generator_cpu=1.0, host_idle=0.0)) == []  # not the system's
    # a slow connect on a host with no CPU left is no evidence of a port search
    assert _exhausted(step(1, classes={"SlowConnect": 3}, host_idle=0.01)) == []
    assert _exhausted(step(1, classes={"EADDRNOTAVAIL": 3}, host_idle=0.01)) == ["ports"]


T0 = 1_700_000_000


def cpu(t: float, measurement: str, tags: dict[str, str], **fields: float) -> Sample:
    return Sample(measurement, tags, dict(fields), int(t * SECOND_NS))


def test_steps_are_cut_from_the_load_series_at_the_ramp(tmp_path: Path) -> None:
    """4 steps of 5 s on the workers' clock: the master started 3.5 s before the workers'
    first connection (a busy host), so seconds T0..T0+4 are the 100 step, etc."""
    seconds = ([Second(100)] * 5 + [Second(200, p99_us=3_000)] * 5
               + [Second(320, failed=4, classes={"ECONNREFUSED": 4})] * 5 + [Second(390)] * 5)
    worker = {"role": "client", "process": "locust-worker", "pid": "7"}
    extra = [cpu(T0 + i + 0.5, "process", worker, busy=0.3 + 0.03 * i) for i in range(20)]
    extra += [cpu(T0 + i + 0.5, "host_cpu", {}, idle=0.5, steal=0.0) for i in range(20)]
    write_run(tmp_path, T0, seconds, ramp=T0 - 3.5, extra=extra)
    scenario = Scenario.model_validate({
        "name": "s",
        "expect": [{"metric": "load.failed", "agg": "sum", "op": ">", "value": 0,
                    "label": "failures appear"}],
        "sweep": {"max_p99": 0.0025,
                  "expect": [{"metric": "load.completed", "agg": "sum", "op": ">=",
                              "value": "rate * 4", "label": "4 s worth completed"}]},
    })  # fmt: skip
    result = analyse(tmp_path, scenario, [100, 200, 400, 800], 5.0)
    by_rate = {s.target: s for s in result.steps}
    assert list(by_rate) == [100, 200, 400, 800]
    assert by_rate[100].connections == 500 and by_rate[100].achieved == 100
    # merged from the histograms (2 significant digits: within 1 %)
    assert by_rate[100].passed and by_rate[100].p99_us == pytest.approx(2_000, rel=0.01)
    # the p99 criterion (2.5 ms) breaks the 200 step, which has no failure
    assert not by_rate[200].passed and "p99 3.0 ms > 2.5 ms" in by_rate[200].why
    assert by_rate[400].classes == {"ECONNREFUSED": 20} and by_rate[400].failures == 20
    # the signature ("failures appear") is reported per step but does not decide it
    assert [e["passed"] for s in result.steps for e in s.signature] == [False, False, True, False]
    assert by_rate[100].expectations[0]["passed"]  # the sweep: criterion decides
    assert result.knee == 100 and result.max_p99_us == 2500
    assert by_rate[800].generator_cpu == pytest.approx(0.3 + 0.03 * 17, abs=0.01)
    assert by_rate[800].host_idle == 0.5 and not by_rate[800].saturated
    assert result.first_exhausted is None  # nothing above its threshold


def test_a_step_p99_is_merged_not_the_worst_second(tmp_path: Path) -> None:
    """One slow second among five: its own p99 is 50 ms, the step's (merged) is not."""
    seconds = [Second(100)] * 3 + [Second(100, p99_us=50_000)] + [Second(100)] * 2
    write_run(tmp_path, T0, seconds, ramp=T0 - 0.3)
    scenario = Scenario.model_validate({"name": "s"})
    [step] = analyse(tmp_path, scenario, [100.0], 6.0).steps
    # the slow second's 3 slow connections are 0.75 % of the 400 settled ones: under 1 %,
    # so the merged 99th percentile lies among the 2,000 µs ones
    assert step.p99_us == pytest.approx(2_000, rel=0.01)
    series_path(tmp_path).unlink()  # without the histograms: the worst second's p99
    [step] = analyse(tmp_path, scenario, [100.0], 6.0).steps
    assert step.p99_us == pytest.approx(50_000, rel=0.01)


def test_the_load_series_is_required(tmp_path: Path) -> None:
    write_run(tmp_path, T0, [])
    with pytest.raises(ChaosError, match="no per-second load series"):
        analyse(tmp_path, Scenario.model_validate({"name": "s"}), [100.0], 5.0)


def test_early_stop_waits_for_extra_steps_after_the_break(tmp_path: Path) -> None:
    rates = [100.0, 200.0, 400.0, 800.0, 1600.0]
    write_run(tmp_path, T0, [])  # the journal: ramp at T0
    held = [Second(100)] * 5 + [Second(199)] * 5
    broke = [Second(300)] * 5  # 75 % of its target: broken, without a failure
    stop = EarlyStop(rates, 5.0, extra_steps=1)
    stop.observe(load_samples(T0, held + broke[:3]))
    assert stop(tmp_path) is None  # the 400 step is still running
    stop.observe(load_samples(T0 + 13, broke[3:] + [Second(310, failed=5)] * 2))
    assert stop(tmp_path) is None  # broke, but the extra step has only begun
    stop.observe(load_samples(T0 + 17, [Second(310, failed=5)] * 3 + [Second(320)]))
    assert stop(tmp_path) is None  # the last step is under way: nothing left to save
    zero = EarlyStop(rates, 5.0, extra_steps=0)
    zero.observe(load_samples(T0, [Second(100)] * 5 + [Second(150, failed=2)] * 5 + [Second(1)]))
    assert "200/s had 10 failures" in (zero(tmp_path) or "")
    assert zero.complete == 2  # 100 and 200 are judged; 400 was cut short


def test_a_step_cut_short_by_the_stop_is_not_judged(tmp_path: Path) -> None:
    rates = [100.0, 200.0, 400.0, 800.0]
    seconds = [Second(100)] * 5 + [Second(120, failed=3)] * 5 + [Second(9, failed=9)] * 4
    write_run(tmp_path, T0, seconds)
    stop = EarlyStop(rates, 5.0, extra_steps=0)
    stop.observe(load_samples(T0, seconds[:11]))
    assert stop(tmp_path) is not None
    scenario = Scenario.model_validate({"name": "s", "load": {"rate": 100}})
    result = analyse(tmp_path, scenario, rates, 5.0, stop)
    assert [s.target for s in result.steps] == [100.0, 200.0]
    assert result.not_run == [400.0, 800.0] and result.knee == 100.0
    assert result.stopped_early and "200/s had 15 failures" in result.stopped_early


def test_sweep_criteria_are_per_step_only() -> None:
    with pytest.raises(ValueError, match="use when: end"):
        during = {"metric": "load.failed", "op": "<=", "value": 0, "when": "during"}
        faults = [{"type": "stop", "target": "origin"}]
        Scenario.model_validate({"name": "s", "faults": faults, "sweep": {"expect": [during]}})
