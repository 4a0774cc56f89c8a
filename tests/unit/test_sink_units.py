"""InfluxDB configuration precedence and the disk spool."""

from __future__ import annotations

import pytest

from chaos.errors import SinkError
from chaos.record.point import Sample
from chaos.scenario.model import InfluxSpec
from chaos.sink import InfluxFlags, Sink, resolve_influx
from chaos.sink.spool import Spool

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


def test_spool_counts_the_marked_lines_of_a_replayed_batch(tmp_path):
    spool = Spool(tmp_path)
    spool.append(b"a 1\nb 2\n", 2)
    spool.append(b"c 3\nd 4\ne 5\n", 3, maybe_stored=True)  # a write that timed out once sent
    body, count, end = spool.read_batch(3)  # a, b, c
    assert (count, spool.maybe_stored_lines(body)) == (3, 1)
    spool.commit(end, count)
    body, count, end = spool.read_batch(5)  # d, e
    assert (count, spool.maybe_stored_lines(body)) == (2, 2)
    spool.commit(end, count)
    spool.append(b"f 6\n", 1)  # after the spool emptied: no mark left over
    body, count, _ = spool.read_batch(5)
    assert spool.maybe_stored_lines(body) == 0
    spool.mark_maybe_stored(len(body))  # the replay itself timed out after sending
    assert spool.maybe_stored_lines(body) == 1
    spool.close()


def test_only_a_failure_to_connect_is_known_unsent():
    import urllib3

    from chaos.sink.influx import _after_sending

    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    assert not _after_sending(urllib3.exceptions.MaxRetryError(None, "/", refused))  # type: ignore[arg-type]
    timed_out = urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")  # type: ignore[arg-type]
    assert _after_sending(timed_out)
    assert _after_sending(ConnectionResetError(104, "Connection reset by peer"))
