"""The load series format (chaos.load.series), its samples (chaos.collect.load_series) and the
load contract (chaos.load.contract, chaos.load.options, the scenario model's refusals).

The histograms are real HdrHistograms; percentiles are checked against values computed here
from the raw samples, not against the library's own output.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chaos.collect.load_series import LoadSeries
from chaos.errors import ScenarioError
from chaos.load import contract
from chaos.load.options import user_options
from chaos.load.series import (
    PHASES,
    Second,
    read_series,
    record_values,
    series_path,
    window_latency,
)
from chaos.scenario.loader import parse
from chaos.scenario.model import LoadSpec

T = 1_796_000_000


def exact_percentile(values: list[int], pct: float) -> int:
    ordered = sorted(values)
    return ordered[max(round(pct / 100 * len(ordered)) - 1, 0)]


def worker_second(t: int, values: list[int], failures: dict[str, int]) -> Second:
    second = Second(t=t, users=5, started=len(values), workers=1)
    second.completed = len(values) - sum(failures.values())
    second.failed = sum(failures.values())
    second.failures = dict(failures)
    record_values(second.histogram("total"), values)
    record_values(second.histogram("connect"), [v // 4 for v in values])
    return second


def write_series(run_dir: Path, seconds: list[Second]) -> None:
    path = series_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(second.to_line() for second in seconds))


def test_merged_seconds_and_window_percentiles_match_the_raw_samples(tmp_path: Path) -> None:
    rng = random.Random(7)
    raw: dict[int, list[int]] = {}
    merged: list[Second] = []
    for t in range(T, T + 6):
        a = [int(rng.lognormvariate(6, 0.8)) + 1 for _ in range(300)]
        b = [int(rng.lognormvariate(7, 0.5)) + 1 for _ in range(200)]
        raw[t] = a + b
        second = worker_second(t, a, {"ECONNREFUSED": 3})
        # through JSON, as a worker's message reaches the master
        second.merge(Second.from_json(worker_second(t, b, {"ETIMEDOUT": 1}).to_json()))
        merged.append(second)
    write_series(tmp_path, merged)

    seconds = list(read_series(tmp_path))
    assert [s.t for s in seconds] == list(range(T, T + 6))
    assert {(s.users, s.started, s.failed, s.workers) for s in seconds} == {(10, 500, 4, 2)}
    assert seconds[0].failures == {"ECONNREFUSED": 3, "ETIMEDOUT": 1}

    window = raw[T + 1] + raw[T + 2] + raw[T + 3]
    summary = window_latency(tmp_path, "total", T + 1, T + 4)  # [start, end)
    assert summary.count == len(window) == 1500
    for pct, got in ((50, summary.p50_us), (90, summary.p90_us), (99, summary.p99_us)):
        want = exact_percentile(window, pct)
        assert abs(got - want) <= 0.01 * want + 1, (pct, got, want)  # 2 significant digits
    assert abs(summary.max_us - max(window)) <= 0.01 * max(window)
    assert summary.mean_us == pytest.approx(sum(window) / len(window), rel=0.01)

    assert window_latency(tmp_path, "total", T + 10, T + 20).count == 0
    assert window_latency(tmp_path, "first_byte", T, T + 6).mean_us is None
    assert window_latency(tmp_path / "nothing", "total", 0, 2 * T).count == 0
    with pytest.raises(ValueError, match="unknown phase"):
        window_latency(tmp_path, "response", T, T + 1)


def test_collector_stamps_each_second_and_splits_failures_by_class(tmp_path: Path) -> None:
    values = [100] * 90 + [5000] * 10
    seconds = [worker_second(T, values, {"ECONNREFUSED": 2, "SlowConnect": 1}), Second(t=T + 1)]
    path = series_path(tmp_path)
    path.parent.mkdir(parents=True)
    line0, line1 = (s.to_line() for s in seconds)
    path.write_text(line0 + line1[:20])  # the second line is still being written
    collector = LoadSeries(path, netns="lab-client", tags={"role": "client"})

    first = collector.sample(now=T + 30)  # read long after: the stamp is the second's own
    load = [s for s in first if s.measurement == "load"]
    failures = [s for s in first if s.measurement == "load_failures"]
    assert [s.time_ns for s in first] == [T * 1_000_000_000] * 3
    assert load[0].tags == {"role": "client", "netns": "lab-client"}
    fields = load[0].fields
    assert (fields["started"], fields["completed"], fields["failed"]) == (100, 97, 3)
    assert fields["total_count"] == 100 and fields["total_p50_us"] == 100
    assert fields["total_p99_us"] == pytest.approx(5000, rel=0.01)
    assert fields["connect_p50_us"] == 25 and fields["first_byte_count"] == 0
    assert "first_byte_p50_us" not in fields  # no samples: no percentile
    assert {s.tags["class"]: s.fields["count"] for s in failures} == {
        "ECONNREFUSED": 2,
        "SlowConnect": 1,
    }
    assert sum(s.fields["count"] for s in failures) == fields["failed"]

    with path.open("a") as fh:
        fh.write(line1[20:])
    second = collector.sample(now=T + 31)
    assert [(s.measurement, s.time_ns) for s in second] == [("load", (T + 1) * 1_000_000_000)]
    assert second[0].fields["total_count"] == 0 and "total_p50_us" not in second[0].fields
    collector.close()


# --------------------------------------------------------------------------- the contract
def test_user_options_reach_both_users_and_always_carry_the_rate_mode() -> None:
    steps = LoadSpec(user="http", rate_steps=[50, 100], step_duration=2)
    argv = user_options(steps, "http", ["198.18.1.10", "198.18.1.11"], workers=2)
    pairs = dict(zip(argv[::2], argv[1::2], strict=True))
    assert pairs == {
        "--workers-hint": "2",
        "--rate-mode": "per-user",  # the model's default, also without a rate
        "--connect-timeout": "5",
        "--rate-steps": "50,100",
        "--step-seconds": "2",
        "--source-addresses": "198.18.1.10,198.18.1.11",
    }
    raw = user_options(
        LoadSpec(rate=500, rate_mode="shared", teardown="hold-after-fin", hold=3),
        "raw",
        [],
        workers=1,
    )
    assert raw[raw.index("--rate-mode") + 1] == "shared"
    assert raw[raw.index("--hold-seconds") + 1] == "3"
    # every flag built is one the contract defines for that user
    flags = {o.flag: o for o in contract.ALL_OPTIONS.values()}
    assert all(flags[a].users >= {"raw"} for a in raw if a.startswith("--"))
    assert all("http" in flags[a].users for a in argv if a.startswith("--"))


def test_model_refuses_a_field_the_http_user_ignores_at_its_line() -> None:
    text = """name: x
load:
  user: http
  rate: 100
  teardown: abort
"""
    with pytest.raises(ScenarioError) as caught:
        parse(text, "x.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 5 and problem.path == "load.teardown"
    assert "user: http does not honour teardown" in problem.message
    # what the http user does anyway, and the fields it honours, are fine
    ok = parse(
        "name: x\nload: {user: http, teardown: wait-server-fin, rate_mode: shared,"
        " rate_steps: [10, 20], connect_timeout: 2s}\n",
        "ok.yaml",
    )
    assert ok.load.rate_mode == "shared"


def test_option_defaults_are_the_models() -> None:
    spec = LoadSpec()
    assert spec.rate_mode == contract.default("rate_mode")
    assert spec.teardown == contract.default("teardown")
    assert spec.connect_timeout == contract.default("connect_timeout")
    assert spec.slow_connect * 1000 == contract.default("slow_connect_ms")
    assert contract.target_rate(25.0, 0, [10, 20, 30], 10) == 30
    assert contract.target_rate(99.0, 0, [10, 20, 30], 10) == 30
    assert contract.target_rate(3.0, 7, [], 10) == 7


def test_the_series_writes_what_the_schema_names() -> None:
    from chaos.collect.load_series import second_samples
    from chaos.record import schema

    assert set(PHASES) <= set(schema.LOAD_PHASES)
    second = worker_second(T, [10, 20, 30], {"ECONNRESET": 1})
    for sample in second_samples(second, {"role": "client"}):
        written = schema.measurement(sample.measurement)
        assert all(written.has_field(name) for name in sample.fields), sample


def test_mean_of_is_hdrh_mean_in_one_pass_over_recorded_buckets():
    from chaos.load.series import mean_of, new_histogram

    rng = random.Random(3)
    histogram = new_histogram()
    for _ in range(2000):
        histogram.record_value(int(rng.lognormvariate(7, 1.5)) + 1)
    assert mean_of(histogram) == histogram.get_mean_value()


def test_record_values_in_buckets_equals_recording_every_value():
    """record_values records each bucket once with its count: the histogram must be the one
    hdrh builds from every value (counts, total, min, max, percentiles, encoding), including
    values out of range (clamped)."""
    from chaos.load.series import HIGHEST_US, bucket_floor, new_histogram

    rng = random.Random(5)
    values = [int(rng.lognormvariate(6, 1.2)) for _ in range(5000)]
    values += [0, 1, 255, 256, 257, 511, 512, 1023, 1024, HIGHEST_US, HIGHEST_US + 10**6]
    one_by_one, bucketed = new_histogram(), new_histogram()
    for value in values:
        one_by_one.record_value(min(max(value, 1), HIGHEST_US))
    record_values(bucketed, values)

    assert list(bucketed.counts) == list(one_by_one.counts)
    assert bucketed.get_total_count() == one_by_one.get_total_count() == len(values)
    assert bucketed.get_min_value() == one_by_one.get_min_value()
    assert bucketed.get_max_value() == one_by_one.get_max_value()
    pcts = [50.0, 90.0, 99.0, 99.9]
    assert bucketed.get_percentile_to_value_dict(pcts) == one_by_one.get_percentile_to_value_dict(
        pcts
    )
    assert bucketed.encode() == one_by_one.encode()
    for value in [*range(1, 3000), *rng.sample(range(HIGHEST_US), 3000)]:
        assert bucket_floor(bucketed, value) == bucketed.get_lowest_equivalent_value(value)


def test_latency_summary_in_one_pass_is_hdrh_own_answer():
    """LatencySummary.of walks the recorded buckets itself: it must give what hdrh's own
    (slow) queries give, for recorded, decoded and merged histograms."""
    from hdrh.histogram import HdrHistogram

    from chaos.load.series import PERCENTILES, LatencySummary, new_histogram

    rng = random.Random(11)
    histograms = []
    for spread in (0.3, 1.0, 2.5):
        histogram = new_histogram()
        record_values(histogram, [int(rng.lognormvariate(6, spread)) for _ in range(3000)])
        histograms.append(histogram)
    single = new_histogram()
    single.record_value(7)
    histograms += [single, HdrHistogram.decode(histograms[1].encode())]
    merged = HdrHistogram.decode(histograms[0].encode())
    merged.add(histograms[2])
    histograms.append(merged)

    for histogram in histograms:
        summary = LatencySummary.of(histogram)
        expected = histogram.get_percentile_to_value_dict(list(PERCENTILES))
        assert (summary.p50_us, summary.p90_us, summary.p99_us) == tuple(
            expected[pct] for pct in PERCENTILES
        )
        assert summary.count == histogram.get_total_count()
        assert summary.max_us == histogram.get_max_value()
        assert summary.min_us == histogram.get_min_value()
        assert summary.mean_us == histogram.get_mean_value()
