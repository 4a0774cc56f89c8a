"""The failures-per-class tailer (``LocustFailures``) over the CSV our locustfiles write, the
tailing it shares with ``LocustHistory``, the report's reading of its points, and the CSV as a
real local Locust writes it (no root; the distributed case is tests/root/test_failure_classes)."""

from __future__ import annotations

import contextlib
import csv
import json
import socket
from pathlib import Path

from chaos.collect.locust_stats import CsvTail, LocustFailures, LocustHistory
from chaos.load.runner import LocustRun
from chaos.record.point import Collector, Sample, to_lines
from chaos.report.data import load_run

RAW = Path(__file__).resolve().parents[2] / "locustfiles" / "raw_tcp.py"

HEADER = "time,elapsed_s,class,count,total\r\n"  # csv.writer's line ending
T = 1_700_000_000
NS = 1_000_000_000


def test_failures_tailer_reads_complete_rows_as_they_arrive(tmp_path: Path) -> None:
    path = tmp_path / "failures_per_second.csv"
    collector = LocustFailures(path, netns="chaos-x-client", tags={"role": "client"})
    assert isinstance(collector, Collector) and isinstance(collector, CsvTail)
    assert collector.name == "locust_failures"
    assert collector.sample(0.0) == []  # the master has not started yet
    with open(path, "w", newline="") as fh:
        fh.write(HEADER)
        fh.flush()
        assert collector.sample(0.0) == []  # a header alone is no sample
        fh.write(f"{T},0,ECONNREFUSED,7,7\r\n{T + 1},1,ECONNREFUSED,3,10\r\n")
        fh.write(f"{T + 1},1,EADDRNOT")  # torn: the master is still writing it
        fh.flush()
        first = collector.sample(0.0)
        fh.write("AVAIL,2,2\r\n")
        fh.flush()
        second = collector.sample(0.0)
        assert collector.sample(0.0) == []  # nothing new: nothing twice
    collector.close()
    collector.close()  # idempotent

    tags = {"role": "client", "netns": "chaos-x-client"}
    assert first == [
        Sample("locust_failures", {**tags, "class": "ECONNREFUSED"}, {"count": 7, "total": 7},
               T * NS),
        Sample("locust_failures", {**tags, "class": "ECONNREFUSED"}, {"count": 3, "total": 10},
               (T + 1) * NS),
    ]  # fmt: skip
    assert second == [
        Sample("locust_failures", {**tags, "class": "EADDRNOTAVAIL"}, {"count": 2, "total": 2},
               (T + 1) * NS),
    ]  # fmt: skip
    # integer fields, always (InfluxDB refuses a type change)
    assert "count=2i,total=2i" in to_lines(second)


def test_failures_tailer_skips_rows_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "failures_per_second.csv"
    path.write_text(
        HEADER
        + "not-a-time,0,ECONNRESET,1,1\r\n"
        + f"{T},0,,1,1\r\n"  # no class
        + f"{T},0,ETIMEDOUT,x,1\r\n"
        + "\r\n"
        + f"{T}.0,0,EPIPE,1,1\r\n"
    )
    collector = LocustFailures(path)
    (sample,) = collector.sample(0.0)
    collector.close()
    assert sample.tags == {"netns": "host", "class": "EPIPE"} and sample.time_ns == T * NS


def test_history_and_failures_share_the_tail(tmp_path: Path) -> None:
    # CsvTail.rows: the header is read once, rows come as dicts, a torn line waits.
    path = tmp_path / "any.csv"
    tail = LocustHistory(path)
    with open(path, "w", newline="") as fh:
        fh.write("Timestamp,Name,User Count\r\n1,connection,")
        fh.flush()
        assert tail.rows() == []
        fh.write("5\r\n2,connection,6\r\n")
        fh.flush()
        assert tail.rows() == [
            {"Timestamp": "1", "Name": "connection", "User Count": "5"},
            {"Timestamp": "2", "Name": "connection", "User Count": "6"},
        ]
    tail.close()


def write_run(run: Path, lines: str) -> None:
    run.mkdir()
    start = {"ts": T - 1, "event": "run.start", "scenario": "s"}
    (run / "journal.jsonl").write_text(json.dumps(start) + "\n")
    (run / "samples.lp").write_text(lines)


def test_report_takes_classes_over_time_from_the_points(tmp_path: Path) -> None:
    run = tmp_path / "run"
    points = [
        Sample("locust_failures", {"class": c, "role": "client"}, {"count": n, "total": t},
               (T + s) * NS)
        for c, s, n, t in (("ECONNREFUSED", 0, 4, 4), ("ECONNREFUSED", 1, 0, 4),
                           ("ETIMEDOUT", 1, 2, 2))
    ]  # fmt: skip
    write_run(run, to_lines(points))
    # The CSV is only read without points: these numbers must not show up.
    (run / "locust").mkdir()
    (run / "locust" / "failures_per_second.csv").write_text(HEADER + f"{T},0,EPIPE,9,9\r\n")
    data = load_run(run)
    assert data.load.classes == {"ECONNREFUSED": [(1.0, 4.0), (2.0, 0.0)],
                                 "ETIMEDOUT": [(2.0, 2.0)]}  # fmt: skip
    assert data.failures_by_class == {"ECONNREFUSED": 4, "ETIMEDOUT": 2}


def test_report_falls_back_to_the_csv_then_to_totals(tmp_path: Path) -> None:
    other = to_lines([Sample("tcp_states", {"role": "client"}, {"time_wait": 1}, T * NS)])
    run = tmp_path / "run"
    write_run(run, other)
    (run / "locust").mkdir()
    (run / "locust" / "failures_per_second.csv").write_text(HEADER + f"{T},0,EPIPE,9,9\r\n")
    data = load_run(run)
    assert data.load.classes == {"EPIPE": [(1.0, 9.0)]} and data.failures_by_class == {"EPIPE": 9}

    bare = tmp_path / "bare"
    write_run(bare, other)
    (bare / "locust").mkdir()
    (bare / "locust" / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nTCP,connection,EPIPE,5\n"
    )
    data = load_run(bare)
    assert data.load.classes == {} and data.failures_by_class == {"EPIPE": 5}


def test_local_locust_writes_every_failure_once_in_its_second(tmp_path: Path) -> None:
    # A real local (not distributed) Locust: no worker reports, so the per-second batches
    # of _common.FailureCsvWriter are what places the failures. A bound socket that does not
    # listen refuses every connect.
    with contextlib.closing(socket.socket()) as closed:
        closed.bind(("127.0.0.1", 0))
        run = LocustRun(
            RAW,
            host=f"tcp://127.0.0.1:{closed.getsockname()[1]}",
            run_dir=tmp_path / "run",
            users=2,
            spawn_rate=2,
            run_time=3,
            workers=0,
            user_args=["--rate", "40"],
            rate_csv=True,
        )
        result = run.run()
    with open(run.failures_csv_path or "", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert result.failures_by_class == {"ECONNREFUSED": result.total_requests}
    assert {row["class"] for row in rows} == {"ECONNREFUSED"}
    assert sum(int(row["count"]) for row in rows) == result.total_requests
    assert int(rows[-1]["total"]) == result.total_requests
    # Every attempt failed, so each second's count is that second's attempts in rate.csv.
    attempts = {int(r["time"]): int(r["achieved_rate"]) for r in result.rate_series}
    counts = {int(r["time"]): int(r["count"]) for r in rows}
    assert {t: n for t, n in counts.items() if n} == {t: n for t, n in attempts.items() if n}
