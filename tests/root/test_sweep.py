"""`chaos sweep` for real: the knee, what ran out first, and who.

* ``proxy-ports``, the built-in capacity scenario, out of the box: 2,000 ports at the proxy
  (40000-41999, no tcp_tw_reuse), HAProxy in tcp mode, the client closes first and the
  origin waits for it (``close: client``): the proxy closes every upstream connection first
  and holds its port in TIME_WAIT for 60 s. Its own steps of 5 s at 50, 100, 200, 400, ...
  use 250, 500, 1,000 and 2,000 ports: the 400 step runs out (1,750 held before it), the
  200 step (87 % at most) holds. The sweep runs one more step (800) and stops early, a
  moment into 1600: 1600 and 3200 are not judged.
* A sweep past what one Locust worker can generate on this machine (the HTTP user, the
  costliest per connection, through a proxy and origin with room to spare): the verdict
  names the load generator, never the proxy or the origin, and calls the knee a lower bound.

Each step's achieved rate is checked against the origin's own access log.
"""

from __future__ import annotations

import json
from pathlib import Path

from chaos.lab.origin_log import read_access_records
from chaos.lab.topology import list_labs
from chaos.load.seconds import load_seconds
from chaos.record.journal import read_journal
from chaos.record.lineproto import read_points


def run_dir(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def served_per_second(run: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    for record in read_access_records(run / "origin-access.log"):
        out[int(record[0])] = out.get(int(record[0]), 0) + 1
    return out


def test_proxy_ports_finds_its_knee_with_ports_first(chaos_cli, tmp_path: Path,
                                                     lab_name: str) -> None:  # fmt: skip
    runs = tmp_path / "runs"
    result = chaos_cli("sweep", "proxy-ports", "--workers", "1", "--name", lab_name,
                       "--runs-dir", str(runs), "--no-report", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run = run_dir(runs)
    sweep = json.loads((run / "sweep.json").read_text())
    steps = {s["target"]: s for s in sweep["steps"]}
    assert list(steps) == [50, 100, 200, 400, 800]
    assert sweep["not_run"] == [1600, 3200] and "400/s" in sweep["stopped_early"]
    assert "not run: 1600, 3200/s" in result.stdout
    stops = [e for e in read_journal(run / "journal.jsonl") if e["event"] == "load.stopped_early"]
    assert len(stops) == 1 and stops[0]["reason"] == sweep["stopped_early"]
    assert [steps[r]["passed"] for r in (50, 100, 200)] == [True, True, True], sweep
    for rate in (50, 100, 200):
        assert steps[rate]["failures"] == 0
        assert steps[rate]["achieved"] >= 0.9 * rate
        assert steps[rate]["p99_us"] > 0
    # the signature (TIME_WAIT >= 1500, ports used up) is reported per step, not deciding:
    # it fails at 50/s, which held
    assert [e["passed"] for e in steps[50]["signature"]] == [False, False]
    broke = steps[400]
    assert not broke["passed"] and broke["failures"] > 0
    assert broke["ports"] >= 0.95 and broke["ports_role"] == "proxy"
    assert steps[200]["ports"] < 0.95
    assert sweep["knee"] == 200 and not sweep["lower_bound"]
    assert sweep["first_exhausted"] == "ports"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sweep"]["knee"] == 200 and summary["sweep"]["first_exhausted"] == "ports"
    assert "knee 200/s" in result.stdout and "first exhausted: ports" in result.stdout
    # CPU of the proxy and of the load generator was measured, below saturation
    assert broke["proxy_cpu"] is not None and steps[50]["proxy_cpu"] < 0.9
    assert steps[50]["generator_cpu"] is not None and steps[50]["host_idle"] is not None
    # the steps' seconds are the origin's: what it served in the 100 step's seconds
    served = served_per_second(run)
    step = steps[100]
    origin = sum(served.get(t, 0) for t in range(int(step["start"]), int(step["end"])))
    assert abs(origin - step["connections"]) <= max(5, 0.05 * origin), (origin, step)
    assert lab_name not in list_labs()


BEYOND_THE_CLIENT = """\
name: sweep-beyond-the-client
lab:
  client: {addresses: 16}
  proxy: {kind: haproxy, mode: tcp}
  origin: {protocol: http, close: server, access_log: true}
load: {user: http, users: 50, rate_mode: shared}
"""


def test_a_saturated_load_generator_is_named_not_the_system(chaos_cli, tmp_path: Path,
                                                            lab_name: str) -> None:  # fmt: skip
    scenario = tmp_path / "beyond.yaml"
    scenario.write_text(BEYOND_THE_CLIENT)
    runs = tmp_path / "runs"
    result = chaos_cli("sweep", str(scenario), "--rates", "500,1000,2000,4000,8000,16000",
                       "--step-duration", "3s", "--workers", "1", "--name", lab_name,
                       "--runs-dir", str(runs), "--no-report", timeout=120)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode in (0, 10), out
    sweep = json.loads((run_dir(runs) / "sweep.json").read_text())
    assert sweep["first_exhausted"] == "load_generator", out
    assert sweep["lower_bound"], out
    first_bad = next(s for s in sweep["steps"] if not s["passed"])
    assert first_bad["saturated"], first_bad
    # "load generator saturated (busiest locust-worker 97% of its core) at 4,000/s: the knee
    # is a lower bound; ...", or "host saturated (0% idle, ...)" on a busy host
    verdict = sweep["verdict"]
    assert "saturated (" in verdict and f"at {first_bad['target']:,g}/s: " in verdict
    assert verdict.split(":")[0] in result.stdout.replace("\n", " ")
    for step in sweep["steps"]:
        assert not {"proxy_cpu", "origin"} & set(step["exhausted"]), step
    assert "origin" not in sweep["evidence"] and "proxy" not in sweep["evidence"]
    # the shortfall is real: over the run, the origin served what the series says was started
    # and not failed (within the users' connections open when the load was stopped early),
    # and in the broken step it served less than the target asked for
    run = run_dir(runs)
    served = served_per_second(run)
    seconds = load_seconds(read_points(run / "samples.lp")).values()
    started, failed = sum(s.started for s in seconds), sum(s.failed for s in seconds)
    assert abs(started - failed - sum(served.values())) <= 50, (started, failed, served)
    origin = sum(served.get(t, 0) for t in range(int(first_bad["start"]), int(first_bad["end"])))
    assert origin < 0.9 * first_bad["target"] * (first_bad["end"] - first_bad["start"])


def test_sweep_rejects_bad_rates_with_a_hint(chaos_cli) -> None:
    result = chaos_cli("sweep", "smoke", "--rates", "400,200")
    assert result.returncode == 1
    assert "rise step by step" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    result = chaos_cli("sweep", "smoke")
    assert result.returncode == 1 and "needs its rates" in result.stderr
    result = chaos_cli("sweep", "proxy-ports", "--max-p99", "soon")
    assert result.returncode == 1 and "--max-p99 'soon'" in result.stderr
