"""An external proxy (the user's own, running on the host) measured like the lab's own: a
sweep reports its CPU (``proxy_cpu``) from the pid the scenario names, and its sockets are
sampled in its namespace as role ``proxy``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from test_lab import start_host_haproxy

from chaos.collect.process import _stat
from chaos.errors import ExpectationFailed
from chaos.lab.topology import list_labs
from chaos.record.lineproto import read_points

PORT = 18000 + os.getpid() % 1000  # the host is shared: a port of this session's own

USER_HAPROXY = f"""\
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    # the host side of the lab's client link exists only once the lab is up: transparent
    bind 198.18.1.1:{PORT} transparent
    default_backend be
backend be
    server origin 198.18.3.2:8080
"""


def start_user_proxy(tmp_path: Path) -> subprocess.Popen:
    conf = tmp_path / "user-haproxy.cfg"
    conf.write_text(USER_HAPROXY)
    return start_host_haproxy(conf, PORT)


def test_sweep_reports_proxy_cpu_of_an_external_proxy(chaos_cli, tmp_path, lab_name):
    user_proxy = start_user_proxy(tmp_path)
    try:
        before = _stat(user_proxy.pid)
        assert before is not None
        scenario = tmp_path / "external.yaml"
        scenario.write_text(
            f"""\
name: sweep-external
lab:
  client: {{addresses: 4}}
  proxy:
    kind: external
    address: "198.18.1.1:{PORT}"
    process: {{pid: {user_proxy.pid}}}
load: {{user: raw, users: 10}}
"""
        )
        runs = tmp_path / "runs"
        result = chaos_cli("sweep", str(scenario), "--rates", "100,300", "--step-duration", "4s",
                           "--workers", "1", "--name", lab_name, "--runs-dir", str(runs),
                           "--no-report", "--no-influx", timeout=90)  # fmt: skip
        after = _stat(user_proxy.pid)
        assert after is not None
    finally:
        user_proxy.terminate()
        user_proxy.wait()
    # the verdict on the rates is not the point here (steps this short on a busy host may miss
    # their rate): the sweep completed and judged both steps
    assert result.returncode in (0, ExpectationFailed.exit_code), result.stdout + result.stderr
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    sweep = json.loads((run / "sweep.json").read_text())
    assert [s["target"] for s in sweep["steps"]] == [100, 300]
    for step in sweep["steps"]:
        assert step["failures"] == 0
        assert step["proxy_cpu"] is not None and step["proxy_cpu"] > 0, step
    assert "proxy cpu" in result.stdout
    points = read_points(run / "samples.lp")
    cpu = [p for p in points if p.measurement == "process" and p.tags.get("role") == "proxy"]
    assert cpu and {p.tags["pid"] for p in cpu} == {str(user_proxy.pid)}
    # the CPU it reports is the process's own, as /proc had it before and after the sweep
    reported = [float(p.fields["cpu_s"]) for p in cpu]
    assert before[0] <= min(reported) <= max(reported) <= after[0]
    assert max(reported) - min(reported) > 0
    # its sockets were sampled in its namespace (the host's, through its pid), as role proxy
    states = [p for p in points if p.measurement == "tcp_states" and p.tags.get("role") == "proxy"]
    assert states and {p.tags["netns"] for p in states} == {f"pid:{user_proxy.pid}"}
    assert lab_name not in list_labs()
