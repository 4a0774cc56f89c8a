"""The fault schedule for real: at / for / every, parallel faults, ramps, validation of
everything before the run, and revert of everything on stop() and after a failure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_lab import MiniLab, mini_lab, nft_ruleset

from chaos.errors import FaultError
from chaos.faults.engine.ledger import Ledger
from chaos.faults.engine.schedule import FaultSchedule
from chaos.kernel import netns
from chaos.kernel.processes import state_of
from chaos.record.journal import Journal, read_journal
from chaos.scenario.model import FaultSpec

FIN = "net.ipv4.tcp_fin_timeout"


@pytest.fixture
def lab(lab_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MiniLab]:
    monkeypatch.setenv("CHAOS_LEDGER_DIR", str(tmp_path / "ledger"))
    with mini_lab(lab_name, tmp_path) as made:
        yield made


def spec(**fields: Any) -> FaultSpec:
    return FaultSpec.model_validate(fields)


def fin(values: int) -> dict[str, Any]:
    return {"values": {FIN: values}}


def test_schedule_runs_windows_repeats_and_ramps_in_parallel(lab, tmp_path):
    # Times are in units of S seconds: each observation lands at least 0.3 s from the nearest
    # transition, which an apply or revert (an nft or sysctl process each) under a busy CI
    # machine can take; at 0.1 s margins the test failed once in CI.
    S = 3.0
    journal = Journal(tmp_path / "journal.jsonl")
    annotations: list[tuple[str, dict]] = []
    specs = [
        spec(
            type="nft-filter", target="origin", at=0.3 * S, **{"for": 1.0 * S},
            params={"dport": 8080},
        ),
        spec(
            type="sysctl",
            target="client",
            at=0,
            **{"for": 1.5 * S},
            params={"ramp": [fin(20), fin(30), fin(40)]},
        ),
        spec(type="stop", target="origin", at=0.2 * S, every=1.0 * S, **{"for": 0.4 * S}),
        spec(type="nft-loss", target="client", params={"probability": 1}),  # until stop()
    ]
    original_fin = netns.sysctl_get(lab.client, FIN)
    schedule = FaultSchedule(
        specs, lab.state, journal, annotate=lambda a, **f: annotations.append((a, f))
    )
    schedule.validate()
    # the params validate parsed stay on the specs: no later stage parses them again
    ramp = specs[1].parsed
    assert ramp is not None and len(ramp) == 3 and ramp[2].values == {FIN: 40}  # type: ignore[attr-defined]
    origin_pid = lab.origin_pids[0]

    def observe() -> tuple[bool, str, bool, bool]:
        return (
            "chaos_" in nft_ruleset(lab.origin),
            netns.sysctl_get(lab.client, FIN),
            state_of(origin_pid) == "T",
            "chaos_" in nft_ruleset(lab.client),
        )

    t0 = time.monotonic()
    seen = {}
    try:
        schedule.start(t0)
        for at in (0.4, 0.8, 1.4, 1.8):
            time.sleep(max(0.0, t0 + at * S - time.monotonic()))
            seen[at] = observe()
    finally:
        schedule.stop()
        journal.close()
    assert seen[0.4] == (True, "20", True, True)
    assert seen[0.8] == (True, "30", False, True)
    assert seen[1.4] == (False, "40", True, True)
    assert seen[1.8] == (False, original_fin, False, True)
    assert observe() == (False, original_fin, False, False)
    assert Ledger().entries() == ([], [])

    events = [e for e in read_journal(tmp_path / "journal.jsonl") if e["event"].startswith("fault")]
    applies = [(e["spec"], e["step"], e["window"]) for e in events if e["event"] == "fault.apply"]
    assert sorted(applies) == [
        (0, 0, 0),
        (1, 0, 0),
        (1, 1, 0),
        (1, 2, 0),
        (2, 0, 0),
        (2, 0, 1),
        (3, 0, 0),
    ]
    assert len([e for e in events if e["event"] == "fault.revert"]) == 7
    assert not [e for e in events if "failed" in e["event"]]
    # Ramp steps land where they should (generous tolerance on a shared 2-core machine).
    ramp = [e for e in events if e["event"] == "fault.apply" and e["spec"] == 1]
    assert [round(e["at"], 3) for e in ramp] == [0.0, 0.5 * S, 1.0 * S]
    assert [a for a, _ in annotations].count("apply") == 7
    assert [a for a, _ in annotations].count("revert") == 7


def test_validate_reports_every_problem_before_anything_runs(lab):
    specs = [
        spec(type="no-such", target="origin"),
        spec(type="stop", target="nowhere"),
        spec(type="nft-filter", target="origin", params={"tcp_flags": "bogus"}),
        spec(type="sysctl", target="client", every=1, params=fin(5)),
        spec(type="kill", target="origin", **{"for": 1}),
        spec(type="nft-loss", target="client", params={"probability": 5, "ramp": [{}, {}]}),
        spec(type="stop", target="origin", every=1, **{"for": 2}),
    ]
    with pytest.raises(FaultError) as info:
        FaultSchedule(specs, lab.state).validate()
    message = info.value.message
    assert message.startswith("7 problem(s) in the faults")
    for text in (
        "faults[0] (no-such on origin): unknown fault type",
        "faults[1] (stop on nowhere): fault target 'nowhere': unknown target",
        "faults[2] (nft-filter on origin): fault nft-filter on origin: invalid params",
        "faults[3] (sysctl on client): `every` needs `for`",
        "faults[4] (kill on origin): kill cannot be reverted",
        "faults[5] (nft-loss on client): a ramp needs `for`",
        "faults[6] (stop on origin): `for` must not exceed `every`",
    ):
        assert text in message
    assert "chaos_" not in nft_ruleset(lab.origin)


def test_a_failed_apply_stops_the_schedule_and_everything_is_reverted(lab, tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    original_fin = netns.sysctl_get(lab.client, FIN)
    specs = [
        spec(type="sysctl", target="client", params=fin(12)),
        # No process matches when the fault is prepared: the apply fails at 0.2 s.
        spec(type="stop", target="client:^no-such-program$", at=0.2),
        spec(type="nft-filter", target="origin", at=5, params={"dport": 8080}),
    ]
    schedule = FaultSchedule(specs, lab.state, journal)
    schedule.start()
    deadline = time.monotonic() + 5
    while schedule.error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert netns.sysctl_get(lab.client, FIN) == "12"  # still applied until stop()
    with pytest.raises(FaultError, match="no live process matches"):
        schedule.stop()
    schedule.stop()  # a second stop is harmless
    journal.close()
    assert netns.sysctl_get(lab.client, FIN) == original_fin
    assert "chaos_" not in nft_ruleset(lab.origin)
    assert Ledger().entries() == ([], [])
    names = [e["event"] for e in read_journal(tmp_path / "journal.jsonl")]
    assert names == ["fault.apply", "fault.schedule.failed", "fault.revert"]
