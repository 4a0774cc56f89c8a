"""The per-second load series in a real lab, checked against what the tool does not compute
itself: the journal's fault times and the origin's own access log.

``chaos run`` with a stopped origin (5-8 s) and a SYN reject in front of the proxy (12-14 s)
under a steady rate: failures, latency and completions land in the seconds they happened
(``load`` and ``load_failures`` in samples.lp). Then ``user: http`` in one lab: its rate, rate
steps, rate mode and source addresses reach the users, counted at the origin.
"""

from __future__ import annotations

import itertools
import json
import statistics
import textwrap
import time
from collections import Counter

import pytest
from test_teardown_states import running_lab

from chaos.kernel import netns
from chaos.lab.origin_log import read_access_records
from chaos.load.options import locustfile_for, user_options
from chaos.load.runner import LocustRun
from chaos.load.series import read_series, window_latency
from chaos.record.journal import read_journal
from chaos.record.lineproto import read_points

pytestmark = pytest.mark.root
NS = 1_000_000_000

CLOCK = """
name: load-clock
duration: 20s
lab:
  proxy: {kind: haproxy, mode: tcp}
  origin: {protocol: http, close: server, access_log: true}
load: {user: raw, users: 20, rate: 150, rate_mode: shared, teardown: wait-server-fin,
       connect_timeout: 2s, slow_connect: 1s}
faults:
  - {type: stop, target: origin, at: 5s, for: 3s}
  - {type: nft-filter, target: proxy, at: 12s, for: 2s,
     params: {tcp_flags: syn, dport: 8080, action: reject, reject_with: tcp-reset}}
"""
CONNECT_TIMEOUT = 2


def per_second(records: list[tuple[float, str, int, int, int]]) -> Counter[int]:
    return Counter(int(record[0]) for record in records)


def test_series_seconds_match_the_faults_and_the_origin(chaos_cli, tmp_path, lab_name):
    scenario = tmp_path / "clock.yaml"
    scenario.write_text(CLOCK)
    result = chaos_cli(
        "run", str(scenario), "--name", lab_name, "--runs-dir", str(tmp_path / "runs"),
        "--workers", "2", "--no-progress", timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (p for p in (tmp_path / "runs").iterdir() if p.is_dir())

    journal = list(read_journal(run / "journal.jsonl"))
    applied = {e["kind"]: e["ts"] for e in journal if e["event"] == "fault.apply"}
    reverted = {e["kind"]: e["ts"] for e in journal if e["event"] == "fault.revert"}
    stop_at, stop_end = applied["stop"], reverted["stop"]
    reject_at, reject_end = applied["nft-filter"], reverted["nft-filter"]

    points = read_points(run / "samples.lp")
    load = {p.time_ns // NS: p.fields for p in points if p.measurement == "load"}
    failures = [p for p in points if p.measurement == "load_failures"]
    assert load and all(p.time_ns % NS == 0 for p in points if p.measurement == "load")
    first, last = min(load), max(load)
    assert sorted(load) == list(range(first, last + 1))  # a point for every second

    # 1. No failure in any second before the origin was stopped.
    before = [t for t in load if t < int(stop_at)]
    assert len(before) >= 3, (first, stop_at)
    assert all(load[t]["failed"] == 0 for t in before), {t: load[t]["failed"] for t in before}

    # 2. The slow seconds are the stop's: p99 of the connections that ended in a second,
    # against 10x the median of the baseline seconds' p99 (the ~20 connections that waited
    # for the stopped origin end in a second of ~150 fast ones: more than 1 %).
    baseline = statistics.median(
        load[t]["total_p99_us"] for t in before if "total_p99_us" in load[t]
    )
    # (the last second, in which Locust stopped its users, describes the load's own end)
    running = [t for t, f in load.items() if f["users"]]
    slow = [t for t in running if load[t].get("total_p99_us", 0) > 10 * baseline]
    assert slow, "the stopped origin left no trace in the latency"
    assert all(int(stop_at) <= t <= stop_end + CONNECT_TIMEOUT for t in slow), (
        slow, stop_at, stop_end, baseline,
    )  # fmt: skip

    # 3. The refused connections are the SYN reject's, and the classes add up.
    refused = {p.time_ns // NS: p.fields["count"] for p in failures
               if p.tags["class"] == "ECONNREFUSED"}  # fmt: skip
    assert sum(refused.values()) > 50, refused
    assert all(int(reject_at) <= t <= reject_end + 1 for t in refused), (
        refused, reject_at, reject_end,
    )  # fmt: skip
    by_second = Counter()
    for point in failures:
        by_second[point.time_ns // NS] += point.fields["count"]
    assert {t: n for t, n in by_second.items()} == {t: f["failed"] for t, f in load.items()
                                                     if f["failed"]}  # fmt: skip

    # 4. Completions per second are the origin's responses per second (its own clock, its
    # own log) over the steady seconds: whole seconds of load away from each fault (and the
    # second after a revert: the origin works off what waited), not the first or the last.
    served = per_second(read_access_records(run / "origin-access.log"))
    quiet = [
        (first + 1, int(stop_at) - 1),
        (int(stop_end) + 2, int(reject_at) - 1),
        (int(reject_end) + 2, last - 2),
    ]
    steady = [t for lo, hi in quiet for t in range(lo, hi + 1)]
    assert len(steady) >= 5, (quiet, first, last)
    for t in steady:
        completed = load[t]["completed"]
        assert completed > 50, (t, load[t])
        assert abs(completed - served[t]) <= 0.02 * served[t] + 1, (t, completed, served[t])

    # Over the whole run: every response the origin wrote was counted once, but for those
    # in flight when Locust stopped its users (one per user at most); Locust's own count
    # (one request per connection, its master waiting for the workers' last reports) is
    # the series' connections.
    seconds = list(read_series(run))
    completed = sum(s.completed for s in seconds)
    assert completed <= sum(served.values()) <= completed + 20
    summary = json.loads((run / "summary.json").read_text())
    assert summary["load"]["total_requests"] == completed + sum(s.failed for s in seconds)
    assert window_latency(run, "total", first, last + 1).p50_us > 0


HTTP_LAB = """
name: http-user
lab:
  client: {addresses: 3}
  proxy: {mode: tcp}
  origin: {protocol: http, close: server, access_log: true}
load: {user: http, users: 10, rate_mode: shared, rate_steps: [40, 120], step_duration: 3s}
"""


def gaps_cv(times: list[float]) -> float:
    """Coefficient of variation of the gaps between arrivals: ~0 for evenly spaced,
    ~1 for independent (random-phase) arrivals."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return statistics.pstdev(gaps) / statistics.mean(gaps)


def test_http_user_honours_rate_steps_mode_and_sources(tmp_path, lab_name):
    with running_lab(lab_name, tmp_path, textwrap.dedent(HTTP_LAB)) as (scenario, state, run):
        # straight at the origin (the gateway routes it), so its log shows the client addresses
        host = f"http://{state.origin['host']}:{state.origin['port']}"
        access_log = run.path / "origin-access.log"

        def load_run(load, name: str, seconds: float) -> list[tuple[float, str, int, int, int]]:
            before = len(read_access_records(access_log))
            LocustRun(
                locustfile_for(load),
                host=host,
                run_dir=run.path / name,
                users=load.users,
                spawn_rate=load.users,
                run_time=seconds,
                workers=1,
                user_args=user_options(load, "http", state.client_addresses, 1),
                spawn=lambda argv, **kw: netns.popen(state.namespaces["client"], argv, **kw),
                stop_timeout=3,
            ).run()
            time.sleep(1.2)  # the origin writes its log at least once a second
            return read_access_records(access_log)[before:]

        stepped = load_run(scenario.load, "stepped", 7)
        paced = scenario.load.model_copy(update={"rate_steps": [], "rate": 40.0,
                                                 "rate_mode": "per-user"})  # fmt: skip
        per_user = load_run(paced, "per-user", 5)

    # rate steps: the origin's per-second counts of each step's middle seconds
    seconds = list(read_series(run.path / "stepped"))
    start = min(s.t for s in seconds if s.started)
    counts = per_second(stepped)
    step1 = [counts[t] for t in range(start + 1, start + 3)]
    step2 = [counts[t] for t in range(start + 4, start + 6)]
    assert all(34 <= n <= 46 for n in step1), step1
    assert all(102 <= n <= 138 for n in step2), step2
    # the series counts the same connections (the HTTP user records them too)
    by_second = {s.t: s.completed for s in seconds}
    for t in range(start + 1, start + 6):
        assert abs(by_second[t] - counts[t]) <= 0.02 * counts[t] + 1, (t, by_second[t], counts[t])
    # source addresses: round-robin over the client's addresses
    peers = Counter(record[1] for record in stepped)
    assert set(peers) == set(state.client_addresses), peers
    assert max(peers.values()) - min(peers.values()) <= 0.1 * len(stepped)

    # rate and rate mode: 40/s either way, but per-user pacing puts each user on its own
    # schedule (random phases: gaps vary like random arrivals), the shared bucket spaces
    # them evenly (gaps of 25 ms, far above the event loops' batching of a few ms)
    per_user_counts = per_second(per_user)
    users = {s.t: s.users for s in read_series(run.path / "per-user")}
    middle = [t for t in sorted(users)[1:] if users[t] and users.get(t - 1)]  # whole seconds
    assert len(middle) >= 2, users
    assert all(34 <= per_user_counts[t] <= 46 for t in middle), (per_user_counts, users)
    shared_times = [r[0] for r in stepped if start + 1 <= r[0] < start + 3]
    paced_times = [r[0] for r in per_user if middle[0] <= r[0] < middle[-1] + 1]
    assert gaps_cv(shared_times) < 0.5 < gaps_cv(paced_times), (
        gaps_cv(shared_times), gaps_cv(paced_times),
    )  # fmt: skip
