"""What a soak needs, on a short real run: per-connection logs stay under their cap
(``lab.log_cap``) and the load follows ``chaos run --rate/--users``.

Independent truth: the files on disk for the cap; the origin's own served count (its stats
file) for the rate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chaos.lab.origin_log import access_log_rotated_away
from chaos.lab.topology import list_labs
from chaos.record import logcap

CAP = 16 * 1024
SCENARIO = f"""\
name: soak-caps
lab:
  log_cap: {CAP}
  proxy: {{kind: haproxy, mode: tcp}}
  origin: {{protocol: http, close: server, access_log: true, workers: 2}}
load: {{user: raw, users: 50, rate: 10, rate_mode: shared, teardown: wait-server-fin}}
"""


def capped_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in logcap.log_parts(path))


def test_logs_stay_under_their_cap_and_rate_users_override(
    chaos_cli, tmp_path: Path, lab_name: str
):
    scenario = tmp_path / "soak.yaml"
    scenario.write_text(SCENARIO)
    result = chaos_cli("run", str(scenario), "--duration", "10s", "--rate", "150", "--users",
                       "5", "--workers", "1", "--name", lab_name, "--no-report",
                       "--runs-dir", str(tmp_path / "runs"), timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    resolved = (run / "scenario.yaml").read_text()
    assert "rate: 150" in resolved and "users: 5" in resolved

    # ~1,500 connections (the scenario's own rate would give ~100): ~90 bytes a line in the
    # proxy log, ~45 in the access log; a busy shared host may fall behind the rate
    served = json.loads((run / "origin-stats.json").read_text())["responses"]
    assert 1500 * 0.5 <= served <= 1500 * 1.1, served
    proxy_log = run / "logs" / "proxy.log"
    assert 0 < capped_bytes(proxy_log) <= CAP
    assert logcap.rotated_away(proxy_log) > 0
    access_log = run / "origin-access.log"
    worker_parts = [p for p in run.iterdir() if p.name.startswith("origin-access.log.")]
    assert worker_parts and sum(p.stat().st_size for p in worker_parts) <= CAP
    assert access_log_rotated_away(access_log) > 0
    assert lab_name not in list_labs()
