"""Revert survives the controller: SIGKILL it mid-fault and `chaos revert-all` restores
everything from the ledger; SIGTERM and Ctrl-C make the controller revert by itself."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_lab import nft_ruleset, spawn_sleeper

from chaos.faults.engine.ledger import Ledger
from chaos.kernel import netns
from chaos.kernel.processes import state_of

CONTROLLER = Path(__file__).resolve().parent.parent / "fault_controller.py"
KEY = "net.ipv4.tcp_fin_timeout"


def _state(namespace: str, pid: int) -> tuple[str, str, str | None]:
    return nft_ruleset(namespace), netns.sysctl_get(namespace, KEY), state_of(pid)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_controller_death_leaves_nothing_behind(how, namespace, tmp_path, monkeypatch, chaos_cli):
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(tmp_path / "ledger"))
    dummy = spawn_sleeper(namespace)
    try:
        before = _state(namespace, dummy.pid)
        controller = subprocess.Popen(
            [sys.executable, str(CONTROLLER), namespace, str(dummy.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert controller.stdout is not None
        line = controller.stdout.readline()
        assert line.strip() == "applied", controller.stderr.read() if controller.stderr else ""
        ruleset, fin_timeout, dummy_state = _state(namespace, dummy.pid)
        assert "table inet chaos_" in ruleset and fin_timeout == "11" and dummy_state == "T"
        assert len(Ledger().entries()[0]) == 3

        controller.send_signal(getattr(signal, how))
        controller.communicate(timeout=30)
        assert controller.returncode != 0

        if how == "SIGKILL":
            # Nothing ran in the controller: everything is still applied...
            assert _state(namespace, dummy.pid) != before
            listed = chaos_cli("faults", "list")
            assert listed.stdout.count("(gone)") == 3, listed.stdout
            # ...until revert-all, from the ledger alone.
            result = chaos_cli("revert-all")
            assert result.returncode == 0, result.stderr
            assert result.stdout.count("reverted") == 3
            # Newest first: the reverse of the order of apply.
            kinds = [ln.split()[2] for ln in result.stdout.splitlines() if "reverted" in ln]
            assert kinds == ["stop", "sysctl", "nft-filter"]
        # SIGTERM and Ctrl-C: the controller reverted on its way out; SIGKILL: revert-all did.
        assert _state(namespace, dummy.pid) == before
        assert Ledger().entries() == ([], [])
        assert "no active faults" in chaos_cli("faults", "list").stdout
    finally:
        dummy.kill()
        dummy.wait(timeout=10)
