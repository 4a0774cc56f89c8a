"""Sweep arithmetic without a lab: rates, the knee and first exhausted resource, early stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.errors import ChaosError
from chaos.scenario.model import Scenario
from chaos.sweep import EarlyStop, Step, _exhausted, analyse, conclude, parse_rates


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
    assert result.knee == 200
    # TIME_WAIT buckets overflowed first (at 200, still sustained), before ports ran out
    assert result.first_exhausted == "time_wait_buckets"


def test_no_indicator_and_a_short_rate_is_the_origin() -> None:
    result = conclude("s", 5, [step(100), step(200, achieved=120.0)], 0)
    assert (result.knee, result.first_exhausted) == (100, "origin")


def test_no_knee_when_the_first_step_breaks_or_none_does() -> None:
    assert conclude("s", 5, [step(100, failures=1)], 0).knee is None
    held = conclude("s", 5, [step(100), step(200)], 0)
    assert held.knee is None and "above 200" in held.verdict


def test_cpu_and_conntrack_indicators() -> None:
    assert _exhausted(step(1, proxy_cpu=0.95)) == ["proxy_cpu"]
    assert _exhausted(step(1, conntrack=0.2, conntrack_errors=4)) == ["conntrack"]
    assert _exhausted(step(1, origin_cpu=0.97)) == ["origin"]
    assert _exhausted(step(1, classes={"SlowConnect": 3})) == ["ports"]


def write_rates(run: Path, seconds: list[tuple[float, float, int]]) -> None:
    """locust/rate.csv as our locustfiles' master writes it: one row per second."""
    (run / "locust").mkdir(parents=True, exist_ok=True)
    lines = ["time,target_rate,achieved_rate,failures"]
    lines += [f"{1000 + i},{t},{a},{f}" for i, (t, a, f) in enumerate(seconds)]
    (run / "locust" / "rate.csv").write_text("\n".join(lines) + "\n")


def test_early_stop_waits_for_extra_steps_after_the_break(tmp_path: Path) -> None:
    rates = [100.0, 200.0, 400.0, 800.0, 1600.0]
    held = [(100.0, 100.0, 0)] * 5 + [(200.0, 199.0, 0)] * 5
    broke = [(400.0, 300.0, 0)] * 5  # 75 % of its target: broken, without a failure
    stop = EarlyStop(rates, extra_steps=1)
    write_rates(tmp_path, held + broke[:3])
    assert stop(tmp_path) is None  # the 400 step is still running
    write_rates(tmp_path, held + broke + [(800.0, 310.0, 5)] * 2)
    assert stop(tmp_path) is None  # broke, but the extra step has only begun
    write_rates(tmp_path, held + broke + [(800.0, 310.0, 5)] * 5 + [(1600.0, 0.0, 0)])
    assert stop(tmp_path) is None  # the last step is under way: nothing left to save
    write_rates(tmp_path, [(100.0, 100.0, 0)] * 5 + [(200.0, 150.0, 2)] * 5 + [(400.0, 1, 0)])
    reason = EarlyStop(rates, extra_steps=1)(tmp_path)
    assert reason is None
    zero = EarlyStop(rates, extra_steps=0)
    assert "200/s had 10 failures" in (zero(tmp_path) or "")
    assert zero.complete == 2  # 100 and 200 are judged; 400 was cut short


def test_a_step_cut_short_by_the_stop_is_not_judged(tmp_path: Path) -> None:
    rates = [100.0, 200.0, 400.0, 800.0]
    write_rates(tmp_path, [(100.0, 100.0, 0)] * 5 + [(200.0, 120.0, 3)] * 5 + [(400.0, 1, 0)])
    stop = EarlyStop(rates, extra_steps=0)
    assert stop(tmp_path) is not None
    # Locust's rows arrive late: by the time it stopped, the 400 step had run 4 s
    write_rates(tmp_path, [(100.0, 100.0, 0)] * 5 + [(200.0, 120.0, 3)] * 5 + [(400.0, 9, 9)] * 4)
    (tmp_path / "samples.lp").write_text("")
    scenario = Scenario.model_validate({"name": "s", "load": {"rate": 100}})
    result = analyse(tmp_path, scenario, rates, 5.0, stop)
    assert [s.target for s in result.steps] == [100.0, 200.0]
    assert result.not_run == [400.0, 800.0] and result.knee == 100.0
    assert result.stopped_early and "200/s had 15 failures" in result.stopped_early
