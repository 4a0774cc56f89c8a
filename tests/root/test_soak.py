"""A scaled-down soak: `chaos run` for 60 s sampling every 0.2 s (300 ticks, as many as 5 min
at the default 1 s) keeps the controller's memory and its per-tick sampling cost flat.

First and last thirds of the run are compared, never absolute numbers. The sock_diag walks
(census, port budget, zombies) cost in proportion to every TCP socket on the host, other
tests' included, so they get a looser bound than the collectors that only read files, where a
leak or an ever-growing list in our own code would show at once.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from chaos.lab.topology import list_labs
from chaos.record.lineproto import read_points
from chaos.report import write_report

SCENARIO = """\
name: soak-small
lab:
  client: {addresses: 4}
  proxy: {kind: haproxy, mode: http, upstream: close}
  origin: {protocol: http, close: server}
load: {user: raw, users: 10, rate: 20, rate_mode: shared, teardown: wait-server-fin}
collectors: {interval: 200ms}
"""
FILE_COLLECTORS = ("kernel", "conntrack", "load", "process")


def thirds(series: list[tuple[int, float]]) -> tuple[float, float]:
    """Medians of the first and the last third of a time series."""
    values = [v for _, v in sorted(series)]
    n = len(values) // 3
    return statistics.median(values[:n]), statistics.median(values[-n:])


def test_soak_keeps_memory_and_sample_cost_flat(chaos_cli, tmp_path: Path, lab_name: str):
    scenario = tmp_path / "soak.yaml"
    scenario.write_text(SCENARIO)
    result = chaos_cli("run", str(scenario), "--duration", "60s", "--workers", "1", "--name",
                       lab_name, "--runs-dir", str(tmp_path / "runs"), timeout=150)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    points = read_points(run / "samples.lp")
    controller = [p for p in points if p.measurement == "controller"]
    assert len(controller) >= 150  # ticks at 0.2 s, some skipped on a busy machine

    rss = thirds([(p.time_ns, float(p.fields["rss_bytes"])) for p in controller])
    fds = thirds([(p.time_ns, float(p.fields["fds"])) for p in controller])
    threads = thirds([(p.time_ns, float(p.fields["threads"])) for p in controller])
    tick = thirds([(p.time_ns, float(p.fields["duration_ms"])) for p in points
                   if p.measurement == "collector_cost" and p.tags["collector"] == "sampler"])
    per_tick: dict[int, float] = defaultdict(float)  # the file-reading collectors, per tick
    for p in points:
        if p.measurement == "collector_cost" and p.tags["collector"] in FILE_COLLECTORS:
            per_tick[p.time_ns] += float(p.fields["duration_ms"])
    files = thirds(list(per_tick.items()))
    print(f"soak: rss {rss[0] / 2**20:.1f} -> {rss[1] / 2**20:.1f} MiB, tick {tick[0]:.1f} -> "
          f"{tick[1]:.1f} ms, file collectors {files[0]:.2f} -> {files[1]:.2f} ms")  # fmt: skip

    assert rss[1] - rss[0] <= 4 * 2**20, rss  # MiB, not a growth with every tick
    assert fds[0] == fds[1] and threads[0] == threads[1]
    assert files[1] <= 1.3 * files[0] + 0.5, files
    assert tick[1] <= 1.5 * tick[0] + 5, tick

    # the report shows both: the controller's memory and the sampler's cost
    report = write_report(run)
    data = json.loads(report.json_path.read_text())
    assert any(label.startswith("controller.rss_bytes") for label in data["memory_mib"])
    assert data["sampler"]["ticks"] == len(controller)
    html = report.html_path.read_text()
    assert "controller.rss_bytes" in html and "Cost of one sampling tick" in html
    assert lab_name not in list_labs()
