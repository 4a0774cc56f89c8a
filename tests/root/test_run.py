"""`chaos run` end to end: the README's first command, and cleanup on every exit path."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.faults.engine.ledger import Ledger
from chaos.kernel import netns
from chaos.lab.topology import LabState, list_labs
from chaos.record.journal import read_journal

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


#: smoke with a sysctl fault on the origin for the whole run: every signal comes mid-fault
SMOKE_WITH_FAULT = (REPO / "chaos/scenario/builtin/smoke.yaml").read_text() + """
faults:
  - type: sysctl
    target: origin
    at: 0s
    for: 60s
    params: {values: {net.ipv4.tcp_fin_timeout: 7}}
"""


def start_faulted_run(tmp_path: Path, lab_name: str) -> tuple[subprocess.Popen, Path]:
    """`chaos run` with a sysctl fault, once its load and its fault are on; the runs dir."""
    scenario = tmp_path / "faulted.yaml"
    scenario.write_text(SMOKE_WITH_FAULT)
    runs_dir = tmp_path / "runs"
    proc = subprocess.Popen(
        [str(VENV_BIN / "chaos"), "run", str(scenario), "--duration", "60s", "--workers", "1",
         "--name", lab_name, "--runs-dir", str(runs_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 90  # a lab takes long to build on a busy machine
    while time.monotonic() < deadline and proc.poll() is None:
        runs = run_dirs(runs_dir) if runs_dir.exists() else []
        journal = runs[0] / "journal.jsonl" if runs else None
        # the run directory is made a moment before its journal
        exists = journal is not None and journal.exists()
        events = [e["event"] for e in read_journal(journal)] if exists else []  # type: ignore[arg-type]
        if "load.start" in events and "fault.apply" in events:
            return proc, runs_dir
        time.sleep(0.2)
    proc.terminate()  # it cleans up after itself
    _, stderr = proc.communicate(timeout=60)
    pytest.fail(f"the run never started its load and fault: {stderr[-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_cleans_up_on_signal(tmp_path, lab_name, sig, monkeypatch):
    """Closing the terminal (SIGHUP), SIGTERM and Ctrl-C all revert, remove the lab, write
    the report of what was gathered, and exit with 128 + the signal."""
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(ledger))
    proc, runs_dir = start_faulted_run(tmp_path, lab_name)
    try:
        time.sleep(2)  # a sample or two
        assert len(Ledger(ledger).entries()[0]) == 1  # the fault is applied
        signalled = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            sweep(lab_name)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    print(f"{sig.name}: exit {proc.returncode} after {took:.2f} s")
    (run,) = run_dirs(runs_dir)
    events = read_journal(run / "journal.jsonl")
    assert events[-1] == {**events[-1], "event": "run.end", "outcome": "interrupted"}
    assert "fault.revert" in [e["event"] for e in events]
    assert Ledger(ledger).entries() == ([], [])
    assert (run / "report.html").exists() and json.loads((run / "summary.json").read_text())[
        "interrupted"
    ]
    assert LabState.load(lab_name) is None
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"chaos-{lab_name}-")]
    # No Locust, proxy or origin process of the run survives.
    leftover = subprocess.run(["pgrep", "-f", f"chaos-{lab_name}|{tmp_path}"],
                              capture_output=True, text=True).stdout.split()
    assert [pid for pid in leftover if int(pid) != os.getpid()] == []


def test_run_killed_takes_its_processes_along(tmp_path, lab_name, monkeypatch, chaos_cli):
    """SIGKILL of `chaos run`: its lab's processes (origin, proxy, Locust) die with it
    (PR_SET_PDEATHSIG); the namespaces and the fault's ledger entry are swept by
    `chaos lab down` and `chaos revert-all`."""
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(tmp_path / "ledger"))
    proc, _ = start_faulted_run(tmp_path, lab_name)
    try:
        namespaces = LabState.load(lab_name).namespaces.values()
        assert any(netns.pids_in(ns) for ns in namespaces)
        proc.kill()
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(netns.pids_in(ns) for ns in namespaces) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(netns.pids_in(ns) for ns in namespaces)
        assert chaos_cli("lab", "down", lab_name).returncode == 0
        result = chaos_cli("revert-all")
        assert result.returncode == 0 and "reverted" in result.stdout, result.stdout
        assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"chaos-{lab_name}-")]
    finally:
        proc.kill()
        proc.wait()
        sweep(lab_name)


def sweep(lab_name: str) -> None:
    """What a test that failed half-way left: the lab (its faults die with its namespaces)."""
    from chaos.lab import lab

    lab.down(lab_name)


def test_a_run_ended_by_a_failing_fault_leaves_its_report(chaos_cli, tmp_path, lab_name):
    """A fault that fails mid-run (its pattern matches no process at its `at`) ends the run
    with the fault's exit code, and the report of what was gathered until then."""
    scenario = tmp_path / "failing.yaml"
    scenario.write_text((REPO / "chaos/scenario/builtin/smoke.yaml").read_text() + """
faults:
  - type: stop
    target: "origin:no-such-program-here"
    at: 3s
    for: 2s
""")
    runs_dir = tmp_path / "runs"
    result = chaos_cli("run", str(scenario), "--duration", "8s", "--workers", "1",
                       "--name", lab_name, "--runs-dir", str(runs_dir), timeout=300)  # fmt: skip
    assert result.returncode == 7, result.stderr
    assert "no live process matches" in result.stderr and "Traceback" not in result.stderr
    (run,) = run_dirs(runs_dir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is False and "no live process matches" in summary["error"]
    assert (run / "report.html").exists()
    assert lab_name not in list_labs()


BROKEN_USER = """
import sys
sys.path.insert(0, {locustfiles!r})
import raw_tcp


class BrokenUser(raw_tcp.RawTcpUser):
    '''The raw user with a bug: every fifth connection raises before it starts.'''

    calls = 0

    def connection(self):
        BrokenUser.calls += 1
        if BrokenUser.calls % 5 == 0:
            raise ZeroDivisionError("a bug in the user's own code")
        super().connection()

    tasks = [connection]
"""


def test_a_load_whose_own_code_raises_fails_the_run(tmp_path, lab_name, monkeypatch):
    """Exceptions raised by the locustfile (not connection failures) leave connections in no
    count: the run says so and exits 6 (load), whatever the expectations said; Locust's own
    exceptions CSV is the independent count."""
    from rich.console import Console

    from chaos import run as run_module

    broken = tmp_path / "broken_user.py"
    broken.write_text(BROKEN_USER.format(locustfiles=str(REPO / "locustfiles")))
    monkeypatch.setattr(run_module, "locustfile_for", lambda load: broken)
    console = Console(record=True, width=200)
    options = run_module.RunOptions(
        "smoke", runs_root=tmp_path / "runs", duration="4s", lab_name=lab_name, workers=1,
        report=False, progress=False,
    )  # fmt: skip
    assert run_module.run_scenario(options, console) == 6
    said = console.export_text()
    assert "the load generator's own code raised" in said and "broken_user.py:" in said, said
    (run,) = run_dirs(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "locust" / "locust_exceptions.csv", newline="") as rows:
        counted = sum(int(row["Count"]) for row in csv.DictReader(rows))
    assert counted > 0 and sum(summary["load"]["exceptions"].values()) == counted
