"""Samples from real namespaces through the sink into a real victoria-metrics (root).

Ground truth is made independently of the collectors: exactly N TIME_WAIT sockets in a
throw-away namespace, checked against the kernel's own sockstat before sampling.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_collect_census import Lab, listener, make_time_wait, sockstat_tw, wait_for
from test_collect_census import lab as lab
from vmetrics import victoria_fixture  # noqa: F401

from chaos.collect import Sampler, collectors_for
from chaos.record.journal import read_journal
from chaos.sink import InfluxConfig, Sink

pytestmark = pytest.mark.root


def test_time_wait_count_read_back_from_the_server(lab: Lab, victoria, tmp_path):
    n = 57
    name = lab.namespace()

    def build() -> None:
        lsock = listener(socket.AF_INET, "127.0.0.1")
        lab.sockets.append(lsock)
        make_time_wait(lab, lsock, n)

    lab.run(name, build)
    wait_for(lambda: sockstat_tw(name) == n)  # the kernel's own count, before sampling

    config = InfluxConfig(url=victoria.url, org="o", bucket="b")
    sink = Sink(tmp_path, tags={"run": "tw-run", "scenario": "tw"}, influx=config)
    collectors = collectors_for(lab.ref(name), tags={"role": "client"})
    for collector in collectors:
        lab.keep(collector)
    sink.write(Sampler(collectors, interval=1.0).tick())
    stats = sink.close()
    assert stats.dropped == 0 and stats.written == stats.recorded

    (series,) = victoria.export(f'{{__name__="tcp_states_time_wait", netns="{name}"}}', 1)
    assert series.values == [n]
    assert series.labels == {
        "__name__": "tcp_states_time_wait",
        "netns": name,
        "role": "client",
        "family": "all",
        "run": "tw-run",
        "scenario": "tw",
    }


def test_chaos_run_writes_samples_with_role_tags(chaos_cli, victoria, tmp_path, lab_name):
    result = chaos_cli(
        "run", "smoke", "--duration", "3s", "--workers", "1", "--name", lab_name,
        "--runs-dir", str(tmp_path),
        "--influx-url", victoria.url, "--influx-org", "o", "--influx-bucket", "b",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    sink = summary["sink"]
    assert sink["dropped"] == 0 and sink["left_in_spool"] == 0
    assert sink["written"] == sink["recorded"] > 0
    events = {e["event"]: e for e in read_journal(run / "journal.jsonl")}
    assert events["sink.stats"]["written"] == sink["written"]
    assert events["sampler.stop"]["ticks"] >= 3

    series = victoria.export(f'{{__name__="tcp_states_total", run="{run.name}"}}', 4)
    roles = {s.labels["role"]: s for s in series if s.labels.get("family") == "all"}
    assert set(roles) == {"client", "gateway", "proxy", "origin"}
    for role, got in roles.items():
        assert got.labels["netns"] == f"chaos-{lab_name}-{role}"
        assert got.labels["scenario"] == "smoke"
    # the per-second load series: every connection ends in exactly one second, as completed
    # or failed, so the stored seconds add up to Locust's own count of the run
    ended = victoria.export(
        f'{{__name__=~"load_(completed|failed)", run="{run.name}"}}', 2
    )
    total = summary["load"]["total_requests"]
    assert total > 0
    assert sum(sum(s.values) for s in ended) == total
    assert {s.labels["role"] for s in ended} == {"client"}
    lines = Path(run / "samples.lp").read_text().splitlines()
    assert len(lines) == sink["recorded"]
