"""The sink against a real victoria-metrics server (InfluxDB v2 write API) on loopback.

Points are read back with /api/v1/export and compared with what was written: values, tags,
and that every point is there exactly once (export returns duplicates too).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from vmetrics import Series, VictoriaMetrics, free_port, victoria_fixture  # noqa: F401

from chaos.errors import SinkError
from chaos.record.journal import Journal, read_journal
from chaos.record.point import Sample
from chaos.sink import InfluxConfig, Sink
from chaos.sink.spool import Spool

TAGS = {"run": "r-test", "scenario": "sinktest"}


def config_for(server: VictoriaMetrics) -> InfluxConfig:
    return InfluxConfig(url=server.url, org="o", bucket="b", token=None)


def by_label(series: list[Series], label: str) -> dict[str, Series]:
    return {s.labels[label]: s for s in series}


def test_sink_records_every_sample_and_delivers_it_once(victoria, tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    sink = Sink(tmp_path, tags=TAGS, influx=config_for(victoria), journal=journal)
    base = time.time_ns() // 1_000_000 * 1_000_000
    samples = [
        Sample("tcp_states", {"netns": f"ns{k}", "role": "client"}, {"time_wait": k * 10 + i},
               base + i * 1_000_000)
        for i in range(300) for k in range(3)
    ]  # fmt: skip
    for start in range(0, len(samples), 100):  # batches, as the sampler hands them over
        sink.write(samples[start : start + 100])
    sink.annotate("fault.apply", id="f1", kind="netem", target="proxy", error="none")
    stats = sink.close()
    journal.close()

    assert (stats.recorded, stats.written, stats.dropped) == (902, 902, 0)  # + open + annotate
    assert (stats.spooled, stats.left_in_spool) == (0, 0)
    lines = (tmp_path / "samples.lp").read_text().splitlines()
    assert len(lines) == 902
    assert all("run=r-test" in line and "scenario=sinktest" in line for line in lines)

    series = by_label(victoria.export('{__name__="tcp_states_time_wait"}', 900), "netns")
    assert sorted(series) == ["ns0", "ns1", "ns2"]
    for k in range(3):
        got = series[f"ns{k}"]
        assert got.labels == {"__name__": "tcp_states_time_wait", "netns": f"ns{k}",
                              "role": "client", **TAGS}  # fmt: skip
        assert got.timestamps_ms == [base // 1_000_000 + i for i in range(300)]
        assert got.values == [k * 10 + i for i in range(300)]

    (event,) = victoria.export('{__name__="chaos_event_title", action="fault.apply"}', 1)
    assert event.labels == {"__name__": "chaos_event_title", "action": "fault.apply", "id": "f1",
                            "kind": "netem", "target": "proxy", **TAGS}  # fmt: skip
    annotation = next(line for line in lines if "action=fault.apply" in line)
    assert 'title="fault.apply netem on proxy"' in annotation
    events = {e["event"]: e for e in read_journal(tmp_path / "journal.jsonl")}
    assert events["sink.stats"]["written"] == 902 and events["sink.stats"]["dropped"] == 0
    assert not (tmp_path / "spool.lp").exists()


def test_sink_refuses_a_server_that_is_not_there(tmp_path):
    dead = InfluxConfig(url=f"http://127.0.0.1:{free_port()}", org="o", bucket="b")
    with pytest.raises(SinkError) as info:
        Sink(tmp_path, tags=TAGS, influx=dead)
    assert "cannot write to InfluxDB" in info.value.message
    assert "is InfluxDB running" in (info.value.hint or "")
    assert "--no-influx" in (info.value.hint or "")


def test_outage_of_30s_loses_nothing_and_duplicates_nothing(victoria, tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    sink = Sink(
        tmp_path, tags=TAGS, influx=config_for(victoria), journal=journal, flush_interval=0.2
    )
    base_ms = time.time_ns() // 1_000_000
    keys = 20
    written_batches = 0
    stop = threading.Event()

    def producer() -> None:  # a sampler: one batch every 50 ms, unique timestamps
        nonlocal written_batches
        while not stop.is_set():
            i = written_batches
            stamp = (base_ms + i * 10) * 1_000_000
            sink.write([Sample("outage", {"k": str(k)}, {"seq": i}, stamp) for k in range(keys)])
            written_batches += 1
            time.sleep(0.05)

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        time.sleep(3)
        victoria.stop()
        time.sleep(30)
        victoria.start()
        time.sleep(5)
    finally:
        stop.set()
        thread.join()
    stats = sink.close(timeout=60)
    journal.close()

    assert stats.dropped == 0
    assert stats.left_in_spool == 0
    assert stats.spooled > 30 * 15 * keys  # about 30 s of batches went through the spool
    assert stats.replayed == stats.spooled
    assert stats.written == stats.recorded == written_batches * keys + 1
    assert stats.outages == 1
    messages = [e["message"] for e in read_journal(tmp_path / "journal.jsonl")
                if e["event"] == "sink.error"]  # fmt: skip
    assert len(messages) == 2 and "spooling" in messages[0] and "is back" in messages[1]

    series = by_label(victoria.export('{__name__="outage_seq"}', written_batches * keys), "k")
    assert len(series) == keys
    expected_ts = [base_ms + i * 10 for i in range(written_batches)]
    for k in range(keys):
        got = series[str(k)]
        assert got.timestamps_ms == expected_ts, f"k={k}: missing or duplicated points"
        assert got.values == list(range(written_batches))


def test_stalled_server_sigstop_30s_each_point_once(victoria, tmp_path):
    """victoria-metrics SIGSTOPped for 30 s: the kernel still accepts the sink's connections
    and requests, which time out unanswered and are stored after SIGCONT, then replayed. The
    sink marks them possibly stored; the server (-dedup.minScrapeInterval) holds one copy."""
    journal = Journal(tmp_path / "journal.jsonl")
    sink = Sink(tmp_path, tags=TAGS, influx=config_for(victoria), journal=journal,
                flush_interval=0.2, timeout_s=2.0)  # fmt: skip
    base_ms = time.time_ns() // 1_000_000
    keys, batches = 20, 0
    stop = threading.Event()

    def producer() -> None:
        nonlocal batches
        while not stop.is_set():
            stamp = (base_ms + batches * 10) * 1_000_000
            sink.write([Sample("stall", {"k": str(k)}, {"seq": batches}, stamp)
                        for k in range(keys)])  # fmt: skip
            batches += 1
            time.sleep(0.05)

    assert victoria.proc is not None
    thread = threading.Thread(target=producer)
    thread.start()
    try:
        time.sleep(3)
        victoria.proc.send_signal(signal.SIGSTOP)
        time.sleep(30)
    finally:
        victoria.proc.send_signal(signal.SIGCONT)  # never left stopped
        time.sleep(8)
        stop.set()
        thread.join()
    stats = sink.close(timeout=60)
    journal.close()

    assert (stats.dropped, stats.left_in_spool) == (0, 0)
    assert stats.written == stats.recorded == batches * keys + 1
    assert stats.possibly_duplicated > 0  # writes that timed out after they were sent
    assert stats.possibly_duplicated <= stats.replayed == stats.spooled
    sink_stats = [e for e in read_journal(tmp_path / "journal.jsonl") if e["event"] == "sink.stats"]
    assert sink_stats[0]["possibly_duplicated"] == stats.possibly_duplicated

    series = by_label(victoria.export('{__name__="stall_seq"}', batches * keys), "k")
    assert len(series) == keys
    for k in range(keys):
        got = series[str(k)]
        assert got.timestamps_ms == [base_ms + i * 10 for i in range(batches)], f"k={k}"
        assert got.values == list(range(batches))


def run_dir_with_samples(path: Path, count: int) -> list[int]:
    """A run directory whose samples.lp has ``count`` points (written without InfluxDB)."""
    sink = Sink(path, tags=TAGS)
    base_ms = time.time_ns() // 1_000_000 - count
    sink.write([Sample("pushed", {"netns": "host"}, {"n": i}, (base_ms + i) * 1_000_000)
                for i in range(count)])  # fmt: skip
    stats = sink.close()
    assert (stats.recorded, stats.written) == (count, 0)
    return [base_ms + i for i in range(count)]


def test_push_backfills_a_whole_run(victoria, tmp_path, chaos_cli):
    run = tmp_path / "run"
    run.mkdir()
    stamps = run_dir_with_samples(run, 12_345)
    result = chaos_cli("push", str(run), "--url", victoria.url, "--org", "o", "--bucket", "b")
    assert result.returncode == 0, result.stderr
    assert f"pushed 12345 points from {run / 'samples.lp'} to {victoria.url}" in result.stdout
    (series,) = victoria.export('{__name__="pushed_n"}', 12_345)
    assert series.timestamps_ms == stamps
    assert series.values == list(range(12_345))
    assert series.labels["run"] == "r-test"


def test_push_of_the_spool_only(victoria, tmp_path, chaos_cli):
    spool = Spool(tmp_path)
    base_ms = time.time_ns() // 1_000_000 - 100
    lines = [f"spooled,netns=host n={i}i {(base_ms + i) * 1_000_000}\n" for i in range(7000)]
    spool.append("".join(lines).encode(), len(lines))
    spool.close()
    (tmp_path / "samples.lp").write_text("")
    result = chaos_cli("push", str(tmp_path), "--spool", "--url", victoria.url,
                       "--org", "o", "--bucket", "b")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pushed 7000 points" in result.stdout
    assert not (tmp_path / "spool.lp").exists()  # delivered: the spool is gone
    (series,) = victoria.export('{__name__="spooled_n"}', 7000)
    assert series.values == list(range(7000))


def test_push_errors_are_one_line_with_a_fix(tmp_path, chaos_cli):
    run = tmp_path / "run"
    run.mkdir()
    run_dir_with_samples(run, 10)
    dead = f"http://127.0.0.1:{free_port()}"
    result = chaos_cli("push", str(run), "--url", dead, "--org", "o", "--bucket", "b")
    assert result.returncode == 8
    assert "Traceback" not in result.stderr
    error, fix = result.stderr.strip().splitlines()
    assert error.startswith("error: push stopped after 0 of 10 points") and dead in error
    assert fix.startswith("fix: is InfluxDB running at")

    result = chaos_cli("push", str(tmp_path / "nope"), "--url", dead, "--org", "o", "--bucket", "b")
    assert result.returncode == 8 and "is not a directory" in result.stderr

    result = chaos_cli("push", str(run))
    assert result.returncode == 8 and "no InfluxDB to push to" in result.stderr
