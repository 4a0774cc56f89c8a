"""Overlapping faults stack, and a shared host's ledger keeps each owner's faults its own.

Sysctl windows on one (namespace, key) restore the original when the last one ends, in any
order, across processes; overlapping stops of one process are reference-counted; and
`chaos revert-all` beside a live controller leaves that controller's faults applied."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_lab import spawn_sleeper

from chaos.faults.base import Target
from chaos.faults.engine.guard import FaultGuard
from chaos.faults.engine.ledger import Ledger
from chaos.faults.registry import fault_type
from chaos.kernel import netns
from chaos.kernel.processes import state_of

CONTROLLER = Path(__file__).resolve().parent.parent / "fault_controller.py"
KEY = "net.ipv4.tcp_fin_timeout"


def sysctl_window(namespace: str, value: int):  # type: ignore[no-untyped-def]
    return fault_type("sysctl").validate(
        Target("client", namespace, ()), {"values": {KEY: value}}
    )


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_three_overlapping_sysctl_windows_restore_the_original_in_any_order(
    namespace, tmp_path, order
):
    """Three guards (as three runs or agents would be) on one ledger: each revert leaves the
    newest remaining window's value; the last restores the original."""
    ledger = Ledger(tmp_path / "ledger")
    original = netns.sysctl_get(namespace, KEY)
    values = [10, 20, 30]
    guards = [FaultGuard(ledger=ledger) for _ in values]
    handles = [g.apply(sysctl_window(namespace, v)) for g, v in zip(guards, values, strict=True)]
    assert netns.sysctl_get(namespace, KEY) == "30"
    remaining = set(range(3))
    for index in order:
        guards[index].revert(handles[index])
        remaining.discard(index)
        expected = str(values[max(remaining)]) if remaining else original
        assert netns.sysctl_get(namespace, KEY) == expected, (order, index)
    assert ledger.entries() == ([], [])


def test_overlapping_stops_of_one_process_are_reference_counted(namespace, tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    sleeper = spawn_sleeper(namespace)
    try:
        target = Target(f"pid:{sleeper.pid}", namespace, (), (sleeper.pid,))
        first, second = FaultGuard(ledger=ledger), FaultGuard(ledger=ledger)
        a = first.apply(fault_type("stop").validate(target, {}))
        b = second.apply(fault_type("stop").validate(target, {}))
        assert state_of(sleeper.pid) == "T"
        first.revert(a)  # the second stop's window is not cut short...
        assert state_of(sleeper.pid) == "T"
        second.revert(b)  # ...and the last one out continues it
        assert state_of(sleeper.pid) in ("S", "R")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_revert_all_leaves_a_live_owners_faults_and_stacks_across_processes(
    namespace, tmp_path, monkeypatch, chaos_cli
):
    """A live controller (another process) holds a sysctl window, an nft filter and a stop:
    `chaos revert-all` leaves them and says whose they are; a window of this process on the
    same key, reverted first, leaves the controller's value; the controller's own SIGTERM
    then restores the original."""
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(tmp_path / "ledger"))
    original = netns.sysctl_get(namespace, KEY)
    sleeper = spawn_sleeper(namespace)
    controller = subprocess.Popen(
        [sys.executable, str(CONTROLLER), namespace, str(sleeper.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert controller.stdout is not None
        assert controller.stdout.readline().strip() == "applied"
        assert netns.sysctl_get(namespace, KEY) == "11"

        result = chaos_cli("revert-all")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("left ") == 3 and "reverted" not in result.stdout
        assert f"pid {controller.pid}" in result.stdout and "fault_controller" in result.stdout
        assert netns.sysctl_get(namespace, KEY) == "11" and state_of(sleeper.pid) == "T"
        assert len(Ledger().entries()[0]) == 3

        mine = FaultGuard()
        handle = mine.apply(sysctl_window(namespace, 25))
        assert netns.sysctl_get(namespace, KEY) == "25"
        mine.revert(handle)
        assert netns.sysctl_get(namespace, KEY) == "11"  # the controller's window still holds

        controller.send_signal(signal.SIGTERM)
        controller.communicate(timeout=30)
        assert controller.returncode == 128 + signal.SIGTERM
        assert netns.sysctl_get(namespace, KEY) == original
        assert state_of(sleeper.pid) in ("S", "R")
        assert Ledger().entries() == ([], [])
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.communicate()
        sleeper.kill()
        sleeper.wait()


def test_revert_all_force_reverts_a_live_owners_faults(namespace, tmp_path, monkeypatch,
                                                        chaos_cli):  # fmt: skip
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(tmp_path / "ledger"))
    """--force reverts a live owner's fault; the owner then touches nothing (the key may be
    another fault's by now) and its journal says the window ended elsewhere."""
    original = netns.sysctl_get(namespace, KEY)
    events: list[tuple[str, dict]] = []

    class Events:
        def event(self, name: str, /, **fields: object) -> None:
            events.append((name, fields))

    guard = FaultGuard(Events())
    guard.apply(sysctl_window(namespace, 12))
    result = chaos_cli("revert-all", "--force")
    assert result.returncode == 0 and result.stdout.count("reverted") == 1, result.stdout
    assert netns.sysctl_get(namespace, KEY) == original
    later = FaultGuard().apply(sysctl_window(namespace, 14))  # another fault on the key
    guard.revert_all()
    assert netns.sysctl_get(namespace, KEY) == "14"  # left to the later fault
    name, fields = events[-1]
    assert name == "fault.revert" and fields["elsewhere"] is True
    FaultGuard().revert(later)
    assert netns.sysctl_get(namespace, KEY) == original
    assert Ledger().entries() == ([], [])
