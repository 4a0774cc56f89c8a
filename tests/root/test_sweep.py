"""`chaos sweep` for real: the proxy runs out of upstream ports as the rate steps up.

2,000 ports at the proxy (40000-41999, no tcp_tw_reuse), HAProxy in tcp mode, the client
closes first and the origin waits for it (``close: client``): the proxy closes every upstream
connection first and holds its port in TIME_WAIT for 60 s. Steps of 5 s at 50, 100, 200 and
400 connections/s use 250, 500, 1,000 and 2,000 ports: the 400 step runs out (1,750 held
before it), the 200 step (87 % at most) holds. The sweep then runs one more step (800) and
stops early: Locust's per-second rates come ~5 s late, so the stop lands in the 1600 or 3200
step, and 1600, 3200 and 6400 are not judged.
"""

from __future__ import annotations

import json
from pathlib import Path

from chaos.lab.topology import list_labs
from chaos.record.rundir import read_journal

SCENARIO = """\
name: sweep-proxy-ports
lab:
  client: {addresses: 4}
  proxy:
    kind: haproxy
    mode: tcp
    sysctls: {net.ipv4.ip_local_port_range: [40000, 41999], net.ipv4.tcp_tw_reuse: 0}
  origin: {protocol: http, close: client}
load: {user: raw, users: 20, rate_mode: shared, teardown: client-close}
expect:
  - {metric: tcp_states.time_wait, role: proxy, op: ">=", value: 1}
"""


def test_sweep_finds_the_knee_and_the_ports(chaos_cli, tmp_path: Path, lab_name: str) -> None:
    scenario = tmp_path / "ports.yaml"
    scenario.write_text(SCENARIO)
    runs = tmp_path / "runs"
    result = chaos_cli("sweep", str(scenario), "--rates", "50,100,200,400,800,1600,3200,6400",
                       "--step-duration",
                       "5s", "--workers", "1", "--name", lab_name, "--runs-dir", str(runs),
                       "--no-report", timeout=90)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    sweep = json.loads((run / "sweep.json").read_text())
    steps = {s["target"]: s for s in sweep["steps"]}
    assert list(steps) == [50, 100, 200, 400, 800]
    assert sweep["not_run"] == [1600, 3200, 6400] and "400/s" in sweep["stopped_early"]
    assert "not run: 1600, 3200, 6400/s" in result.stdout
    stops = [e for e in read_journal(run / "journal.jsonl") if e["event"] == "load.stopped_early"]
    assert len(stops) == 1 and stops[0]["reason"] == sweep["stopped_early"]
    assert [steps[r]["passed"] for r in (50, 100, 200)] == [True, True, True], sweep
    for rate in (50, 100, 200):
        assert steps[rate]["failures"] == 0
        assert steps[rate]["achieved"] >= 0.9 * rate
        assert steps[rate]["expectations"][0]["passed"]  # judged per step
    broke = steps[400]
    assert not broke["passed"] and broke["failures"] > 0
    assert broke["ports"] >= 0.95 and broke["ports_role"] == "proxy"
    assert steps[200]["ports"] < 0.95
    assert sweep["knee"] == 200
    assert sweep["first_exhausted"] == "ports"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sweep"]["knee"] == 200 and summary["sweep"]["first_exhausted"] == "ports"
    assert "knee 200/s" in result.stdout and "first exhausted: ports" in result.stdout
    # CPU of the proxy was measured (the "proxy_cpu" indicator), and stayed below saturation
    assert broke["proxy_cpu"] is not None and steps[50]["proxy_cpu"] < 0.9
    assert lab_name not in list_labs()


def test_sweep_rejects_bad_rates_with_a_hint(chaos_cli) -> None:
    result = chaos_cli("sweep", "smoke", "--rates", "400,200")
    assert result.returncode == 1
    assert "rise step by step" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    result = chaos_cli("sweep", "smoke")
    assert result.returncode == 1 and "needs its rates" in result.stderr
