"""`chaos report` on a real run: a short `chaos run`, then the report of its directory."""

from __future__ import annotations

import json
import re

from chaos.report.build import REQUIRED_SECTIONS


def test_report_of_a_real_run(chaos_cli, tmp_path, lab_name):
    result = chaos_cli("run", "smoke", "--duration", "3s", "--workers", "1",
                       "--name", lab_name, "--runs-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]

    result = chaos_cli("report", str(run))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "smoke" in result.stdout and "no expectations" in result.stdout
    summary = json.loads((run / "report.json").read_text())
    html = (run / "report.html").read_text()

    # Every namespace was sampled and its plots have data.
    assert list(summary["roles"]) == ["client", "gateway", "proxy", "origin"]
    plots = summary["plots"]
    for plot in ("rate", "latency", "time_wait", "ports", "zombies", "sampler",
                 "states-client", "states-proxy", "states-origin"):  # fmt: skip
        assert plots[plot]["points"] > 0, plot
    for section in REQUIRED_SECTIONS:
        assert f'data-section="{section}"' in html
    # The smoke load (200 connections/s, the origin closes first) leaves TIME_WAIT behind
    # at the origin, and the load series shows up: its connections are the origin's, and
    # its latency is in microseconds (a lab run's p50 is well under a millisecond's rounding)
    assert summary["roles"]["origin"]["states"]["time_wait"]["peak"] > 0
    load = summary["load"]
    assert load["rate"]["peak"] > 0 and load["failures"] == 0
    origin = json.loads((run / "summary.json").read_text())["origin"]["requests"]
    assert 0 <= load["connections"] - origin <= 20  # (in flight at the stop: one per user)
    assert load["completed"] == origin
    assert 0 < load["p50_us"] <= load["p99_us"] <= load["max_us"]
    assert summary["samples"]["bad_lines"] == 0
    assert summary["sampler"]["ticks"] >= 3
    assert not re.search(r"""(?:src|href)\s*=\s*["']?https?:""", html)
