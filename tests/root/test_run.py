"""`chaos run` end to end: the README's first command, and cleanup on every exit path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.kernel import netns
from chaos.lab.topology import LabState, list_labs
from chaos.record.rundir import read_journal

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_run_smoke_end_to_end(chaos_cli, tmp_path, lab_name):
    result = chaos_cli("run", "smoke", "--duration", "4s", "--workers", "2",
                       "--name", lab_name, "--runs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr + result.stdout
    (run,) = run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    load = summary["load"]
    # 200 connections/s for 4 s, with generous bounds for a shared machine.
    assert 400 <= load["total_requests"] <= 1000
    assert load["total_failures"] == 0
    # Every connection went client → HAProxy → origin: the three counts agree, except for
    # connections in flight when Locust stopped its users (served, but never reported;
    # tests/root/test_teardown_states.py checks exact equality with a drained load).
    users = 20
    reported = load["total_requests"]
    assert reported <= summary["origin"]["requests"] <= reported + users
    assert reported <= summary["proxy_logged"] <= reported + users
    events = [e["event"] for e in read_journal(run / "journal.jsonl")]
    assert events[0] == "run.start" and events[-1] == "run.end"
    assert {"lab.up.done", "load.start", "load.end", "lab.down"} <= set(events)
    for name in ("origin", "proxy", "locust-master", "locust-worker-0", "locust-worker-1"):
        assert (run / "logs" / f"{name}.log").exists(), name
    assert (run / "scenario.yaml").exists()
    assert lab_name not in list_labs()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_cleans_up_on_signal(tmp_path, lab_name, sig):
    proc = subprocess.Popen(
        [str(VENV_BIN / "chaos"), "run", "smoke", "--duration", "60s", "--workers", "1",
         "--name", lab_name, "--runs-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = run_dirs(tmp_path)
            if runs and any(e["event"] == "load.start"
                            for e in read_journal(runs[0] / "journal.jsonl")):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run never started its load")
        time.sleep(1)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    events = read_journal(run_dirs(tmp_path)[0] / "journal.jsonl")
    assert events[-1] == {**events[-1], "event": "run.end", "outcome": "interrupted"}
    assert LabState.load(lab_name) is None
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"chaos-{lab_name}-")]
    # No Locust, proxy or origin process of the run survives.
    leftover = subprocess.run(["pgrep", "-f", f"chaos-{lab_name}|{tmp_path}"],
                              capture_output=True, text=True).stdout.split()
    assert [pid for pid in leftover if int(pid) != os.getpid()] == []
