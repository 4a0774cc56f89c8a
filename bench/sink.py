"""Benchmark: the sink's delivery to victoria-metrics against a plain HTTP POST.

    .venv/bin/python bench/sink.py [--points 1000000] [--rounds 2] [--no-render]

Starts a throw-away victoria-metrics on loopback (tmp storage, stopped at exit), renders
``--points`` line-protocol lines (1,000 series x N timestamps, shaped like ``tcp_states``
points) and then, alternately, ``--rounds`` times each:

* **raw POST**: ``http.client`` on one keep-alive connection, 5,000-line batches to
  ``/api/v2/write``, timed until the last 204;
* **sink**: :class:`chaos.sink.Sink` with InfluxDB configured, the same lines handed over
  in 1,000-line lists (``write_lines``, as pre-rendered lines), timed from the first
  ``write_lines`` until ``close()`` returned, i.e. until the server acknowledged every point;
  ``samples.lp`` is written too, as in a run.

Each round writes fresh series (its own ``run`` tag), so series creation costs the same on
both paths. It prints points/s of both, the ratio sink / raw (target >= 0.8), and checks that
the server holds exactly the points sent. Unless ``--no-render``, one more sink pass goes
through ``Sink.write(samples)``, rendering included, for comparison.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from vmetrics import VictoriaMetrics  # noqa: E402 - test infrastructure, usable on its own

from chaos.record.point import Sample, to_line  # noqa: E402
from chaos.sink import InfluxConfig, Sink, SinkStats  # noqa: E402

BATCH = 5000
SERIES = 1000
HANDOFF = 1000  # lines per write_lines() call


def make_samples(points: int, run: str) -> list[Sample]:
    per_series = -(-points // SERIES)
    start_ns = (time.time_ns() // 1_000_000_000 - per_series - 60) * 1_000_000_000
    out = []
    for i in range(points):
        series, step = i % SERIES, i // SERIES
        tags = {"run": run, "scenario": "bench", "netns": f"chaos-bench-{series:04d}",
                "role": "client", "family": "all"}  # fmt: skip
        fields = {"established": i % 977, "time_wait": i % 4099, "total": i % 5003, "exact": False}
        out.append(Sample("tcp_states", tags, fields, start_ns + step * 1_000_000_000))
    return out


def render(samples: list[Sample]) -> list[str]:
    return [to_line(s) for s in samples]


def raw_post(server: VictoriaMetrics, lines: list[str]) -> float:
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    path = "/api/v2/write?org=o&bucket=b&precision=ns"
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    started = time.perf_counter()
    for i in range(0, len(lines), BATCH):
        body = ("\n".join(lines[i : i + BATCH]) + "\n").encode()
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 204:
            raise SystemExit(f"raw POST failed: HTTP {response.status}")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(lines) / elapsed


def through_sink(server: VictoriaMetrics, workdir: Path, lines: list[str]) -> float:
    config = InfluxConfig(url=server.url, org="o", bucket="b")
    sink = Sink(workdir, tags={}, influx=config)
    started = time.perf_counter()
    for i in range(0, len(lines), HANDOFF):
        sink.write_lines(lines[i : i + HANDOFF])
    stats = sink.close(timeout=600)
    elapsed = time.perf_counter() - started
    check_stats(stats, len(lines))
    return len(lines) / elapsed


def through_sink_rendering(server: VictoriaMetrics, workdir: Path, samples: list[Sample]) -> float:
    config = InfluxConfig(url=server.url, org="o", bucket="b")
    sink = Sink(workdir, tags={"bench": "render"}, influx=config)
    started = time.perf_counter()
    for i in range(0, len(samples), HANDOFF):
        sink.write(samples[i : i + HANDOFF])
    stats = sink.close(timeout=600)
    elapsed = time.perf_counter() - started
    check_stats(stats, len(samples))
    return len(samples) / elapsed


def check_stats(stats: SinkStats, points: int) -> None:
    # +1: the sink's opening chaos_event point
    if (stats.written, stats.dropped, stats.spooled) != (points + 1, 0, 0):
        raise SystemExit(f"sink did not deliver every point: {stats}")


def stored_points(server: VictoriaMetrics, run: str) -> int:
    """Lines the server holds for one run (one metric per field: count one field)."""
    server.flush()
    query = urllib.parse.urlencode(
        {"query": f'sum(count_over_time(tcp_states_total{{run="{run}"}}[30d]))'}
    )
    with urllib.request.urlopen(f"{server.url}/api/v1/query?{query}", timeout=120) as resp:
        result = json.loads(resp.read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def wait_stored(server: VictoriaMetrics, run: str, points: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = stored_points(server, run)
        if got >= points or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-render", action="store_true", help="skip the Sample-rendering pass")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="chaos-bench-sink-") as tmp:
        tmpdir = Path(tmp)
        server = VictoriaMetrics(
            tmpdir / "vm-data", tmpdir / "vm.log", extra_args=("-search.latencyOffset=0s",)
        )
        server.start()
        try:
            results: dict[str, list[float]] = {"raw": [], "sink": []}
            for round_ in range(args.rounds):
                for kind in ("raw", "sink"):
                    run = f"bench-{kind}-{round_}"
                    t0 = time.perf_counter()
                    lines = render(make_samples(args.points, run))
                    render_rate = len(lines) / (time.perf_counter() - t0)
                    if kind == "raw":
                        rate = raw_post(server, lines)
                    else:
                        workdir = tmpdir / run
                        workdir.mkdir()
                        rate = through_sink(server, workdir, lines)
                    stored = wait_stored(server, run, len(lines))
                    if stored != len(lines):
                        raise SystemExit(f"{run}: server holds {stored} of {len(lines)} points")
                    results[kind].append(rate)
                    print(
                        f"round {round_ + 1} {kind:>4}: {rate:>10,.0f} points/s "
                        f"({len(lines):,} points; generating them: {render_rate:,.0f}/s)"
                    )
            raw, sink = statistics.median(results["raw"]), statistics.median(results["sink"])
            print(f"\nraw POST, 5,000-line batches : {raw:>10,.0f} points/s (median)")
            print(f"sink (WriteApi, own batching): {sink:>10,.0f} points/s (median)")
            ratios = [s / r for s, r in zip(results["sink"], results["raw"], strict=True)]
            print(f"ratio sink / raw             : {sink / raw:.2f} (per round: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8)")  # fmt: skip
            if not args.no_render:
                samples = make_samples(args.points, "bench-render")
                workdir = tmpdir / "render"
                workdir.mkdir()
                rate = through_sink_rendering(server, workdir, samples)
                print(f"sink.write(samples), rendering included: {rate:,.0f} points/s")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
