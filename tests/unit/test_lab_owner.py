"""A lab records its owner; `chaos lab down --all` leaves the labs of running owners alone.

(`lab down --all` itself is not run here: on a shared host it would reach other sessions'
labs. Its decision, ``topology.running_owner``, is checked against real processes.)"""

from __future__ import annotations

import subprocess
from dataclasses import asdict

import pytest

from chaos.kernel.processes import Owner, start_time
from chaos.lab import topology
from chaos.lab.topology import LabState


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(topology, "STATE_DIR", tmp_path)
    return tmp_path


def test_a_labs_owner_counts_while_it_runs(state_dir):
    owner_proc = subprocess.Popen(["sleep", "30"])
    try:
        owner = Owner(owner_proc.pid, start_time(owner_proc.pid), Owner.current().host)
        LabState(name="owned", namespaces={}, owner=asdict(owner)).save()
        running = topology.running_owner("owned")
        assert running == owner and f"pid {owner_proc.pid} (sleep 30)" == running.describe()
    finally:
        owner_proc.kill()
        owner_proc.wait()
    assert topology.running_owner("owned") is None  # gone: `lab down --all` sweeps it


def test_a_reused_pid_or_an_unrecorded_owner_is_not_running(state_dir):
    me = Owner.current()
    LabState(name="reused", namespaces={}, owner=asdict(Owner(me.pid, 1, me.host))).save()
    assert topology.running_owner("reused") is None  # same pid, another start time
    LabState(name="old", namespaces={}).save()  # a state file from before owners
    assert topology.running_owner("old") is None
    assert topology.running_owner("missing") is None
    # another host's owner cannot be checked here: it counts as running
    LabState(name="far", namespaces={}, owner=asdict(Owner(1, 1, "elsewhere"))).save()
    assert topology.running_owner("far") is not None
