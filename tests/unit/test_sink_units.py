"""The Locust stats-history tailer, InfluxDB configuration precedence and the disk spool."""

from __future__ import annotations

import pytest

from chaos.collect.locust_stats import LocustHistory, percentile_field
from chaos.errors import SinkError
from chaos.record.point import Collector, Sample, to_line
from chaos.scenario.model import InfluxSpec
from chaos.sink import InfluxFlags, Sink, resolve_influx
from chaos.sink.spool import Spool

# The header Locust 2.x writes with --csv-full-history (locust/stats.py)
HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size\r\n"
)
NA = ",".join(["N/A"] * 11)
PCTS = "1,2,2,2,3,4,5,6,9,9,12"


def test_locust_history_tails_complete_rows_only(tmp_path):
    path = tmp_path / "locust_stats_history.csv"
    collector = LocustHistory(path, netns="chaos-x-client", tags={"role": "client"})
    assert isinstance(collector, Collector)
    assert collector.sample(0.0) == []  # Locust has not started yet
    with open(path, "w", newline="") as fh:
        fh.write(HEADER)
        fh.write(f"1700000000,0,,connection,0.000000,0.000000,{NA},0,0,0,0.0,0,0,0.0\r\n")
        fh.write(f"1700000001,20,,connection,180.5,1.5,{PCTS},181,2,2,2.25,0,12,100.0\r\n")
        fh.write("1700000002,20,,Aggregated,190")  # torn: Locust is still writing it
        fh.flush()
        first = collector.sample(0.0)
        fh.write(f".0,0.0,{PCTS},400,2,2,2.5,0,12,100.0\r\n")
        fh.flush()
        second = collector.sample(0.0)
    collector.close()

    assert [s.time_ns for s in first] == [1700000000 * 10**9, 1700000001 * 10**9]
    idle, busy = first
    assert idle.fields == {"users": 0, "rps": 0.0, "fails_per_s": 0.0, "requests": 0,
                           "failures": 0, "median_ms": 0.0, "avg_ms": 0.0, "min_ms": 0.0,
                           "max_ms": 0.0, "avg_bytes": 0.0}  # fmt: skip
    assert busy.tags == {"role": "client", "netns": "chaos-x-client", "name": "connection"}
    assert busy.fields["rps"] == 180.5 and busy.fields["fails_per_s"] == 1.5
    assert busy.fields["requests"] == 181 and busy.fields["failures"] == 2
    assert busy.fields["p50_ms"] == 1.0 and busy.fields["p99_9_ms"] == 9.0
    assert busy.fields["p100_ms"] == 12.0 and busy.fields["avg_ms"] == 2.25
    # one type per field, always (InfluxDB refuses a type change)
    assert to_line(busy).count("i,") == 3 and "users=20i" in to_line(busy)
    (aggregated,) = second
    assert aggregated.tags["name"] == "Aggregated" and aggregated.fields["requests"] == 400


def test_percentile_field_names():
    assert [percentile_field(c) for c in ("50%", "99.9%", "99.99%", "100%")] == [
        "p50_ms", "p99_9_ms", "p99_99_ms", "p100_ms"
    ]  # fmt: skip


ENV = {"INFLUXDB_V2_URL": "http://env:8086", "INFLUXDB_V2_ORG": "eo",
       "INFLUXDB_V2_BUCKET": "eb", "INFLUXDB_V2_TOKEN": "et", "MY_TOKEN": "mt"}  # fmt: skip


def test_influx_config_precedence_flags_then_scenario_then_env():
    assert resolve_influx(None, env={}) is None
    env_only = resolve_influx(None, env=ENV)
    assert env_only is not None
    assert (env_only.url, env_only.org, env_only.bucket, env_only.token) == (
        "http://env:8086", "eo", "eb", "et"
    )  # fmt: skip
    spec = InfluxSpec(url="http://spec:8086/", bucket="sb", token_env="MY_TOKEN")
    from_spec = resolve_influx(spec, env=ENV)
    assert from_spec is not None
    assert (from_spec.url, from_spec.org, from_spec.bucket, from_spec.token) == (
        "http://spec:8086", "eo", "sb", "mt"
    )  # fmt: skip
    flags = InfluxFlags(url="http://flag:1", org="fo", bucket="fb", token="ft")
    from_flags = resolve_influx(spec, flags, env=ENV)
    assert from_flags is not None and from_flags.describe() == "http://flag:1 (org fo, bucket fb)"
    assert from_flags.token == "ft"
    assert resolve_influx(spec, InfluxFlags(disabled=True), env=ENV) is None


@pytest.mark.parametrize(
    ("spec", "env", "words"),
    [
        (InfluxSpec(), {}, "no InfluxDB URL"),
        (InfluxSpec(url="localhost:8086", org="o", bucket="b"), {}, "not an http"),
        (InfluxSpec(url="http://x:1"), {}, "without org and bucket"),
        (None, {"INFLUXDB_V2_URL": "http://x:1", "INFLUXDB_V2_ORG": "o"}, "without bucket"),
    ],
)
def test_influx_config_errors_say_what_to_set(spec, env, words):
    with pytest.raises(SinkError) as info:
        resolve_influx(spec, env=env)
    assert words in info.value.message
    assert info.value.hint


def test_spool_keeps_undelivered_lines_across_reopen(tmp_path):
    spool = Spool(tmp_path)
    spool.append(b"".join(f"m v={i}i {i}\n".encode() for i in range(10)), 10)
    body, count, end = spool.read_batch(4)
    assert count == 4 and body.decode().splitlines()[0] == "m v=0i 0"
    spool.commit(end, count)
    spool.close()
    again = Spool(tmp_path)  # e.g. `chaos push --spool` after the run
    assert again.pending == 6
    body, count, end = again.read_batch(100)
    assert count == 6 and body.decode().splitlines()[0] == "m v=4i 4"
    again.commit(end, count)
    again.close()
    assert not (tmp_path / "spool.lp").exists() and not (tmp_path / "spool.offset").exists()


def test_sink_without_influx_records_samples_and_annotations(tmp_path):
    sink = Sink(tmp_path, tags={"run": "r1", "scenario": "s"})
    sink.write([Sample("m", {"netns": "host"}, {"v": 1}, 5), Sample("m", {}, {}, 6)])
    sink.annotate("fault.revert", id="a", kind="stop", target="origin")
    stats = sink.close()
    assert sink.close() is stats  # idempotent
    lines = (tmp_path / "samples.lp").read_text().splitlines()
    assert lines[0] == "m,netns=host,run=r1,scenario=s v=1i 5"  # the empty sample is left out
    assert lines[1].startswith(
        "chaos_event,action=fault.revert,id=a,kind=stop,run=r1,scenario=s,target=origin "
        'title="fault.revert stop on origin" '
    )
    assert (stats.recorded, stats.written, stats.influxdb) == (2, 0, None)
