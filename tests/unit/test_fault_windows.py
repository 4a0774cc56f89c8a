"""Fault windows are derived once (``record.journal.fault_windows``): the expectations'
``Timeline`` and the report's fault bands agree on a ramp, a kill and a fault never
reverted."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.expect import Timeline
from chaos.record.journal import read_journal
from chaos.report import load_run

T0 = 1_700_000_000.0

EVENTS = [
    {"ts": T0, "event": "run.start", "scenario": "windows"},
    {"ts": T0 + 1, "event": "load.start"},
    # a ramp: three steps of spec 0, window 0, break before make
    {"ts": T0 + 5, "event": "fault.apply", "id": "r0", "kind": "nft-loss", "target": "proxy",
     "spec": 0, "window": 0, "step": 0, "apply_ms": 250.0, "reversible": True},
    {"ts": T0 + 8, "event": "fault.revert", "id": "r0", "kind": "nft-loss", "target": "proxy"},
    {"ts": T0 + 8, "event": "fault.apply", "id": "r1", "kind": "nft-loss", "target": "proxy",
     "spec": 0, "window": 0, "step": 1, "reversible": True},
    {"ts": T0 + 11, "event": "fault.revert", "id": "r1", "kind": "nft-loss", "target": "proxy"},
    {"ts": T0 + 11, "event": "fault.apply", "id": "r2", "kind": "nft-loss", "target": "proxy",
     "spec": 0, "window": 0, "step": 2, "reversible": True},
    {"ts": T0 + 14, "event": "fault.revert", "id": "r2", "kind": "nft-loss", "target": "proxy"},
    # a kill: irreversible, no revert event
    {"ts": T0 + 20, "event": "fault.apply", "id": "k", "kind": "kill", "target": "origin",
     "spec": 1, "window": 0, "reversible": False},
    # never reverted (the run died)
    {"ts": T0 + 25, "event": "fault.apply", "id": "n", "kind": "stop", "target": "origin",
     "spec": 2, "window": 0, "reversible": True},
    {"ts": T0 + 40, "event": "load.end"},
]  # fmt: skip


def test_a_ramp_a_kill_and_an_unreverted_fault_give_both_the_same_windows(
    tmp_path: Path,
) -> None:
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    (tmp_path / "samples.lp").write_text(f"tcp_states,role=client time_wait=1i {int(T0 * 1e9)}\n")
    timeline = Timeline.from_journal(read_journal(tmp_path / "journal.jsonl"))
    bands = load_run(tmp_path).faults

    # expectations: one window per scheduled window, from when its first apply began
    assert [(w.spec, w.applied - T0, w.reverted - T0) for w in timeline.faults] == [  # type: ignore[operator]
        (0, 4.75, 14.0),  # the ramp: its first apply began 250 ms before its event
        (1, 20.0, 20.0),  # the kill: an instant
        (2, 25.0, 40.0),  # never reverted: to the end of the load
    ]
    # the report: the same windows, drawn from when the first apply was done
    assert [(f.id, f.start, f.end, f.steps, f.instant) for f in bands] == [
        ("r0", 5.0, 14.0, 3, False),
        ("k", 20.0, 20.0, 1, True),
        ("n", 25.0, None, 1, False),  # drawn open, "not reverted"
    ]
    assert "(3 steps)" in bands[0].label
    for window, band in zip(timeline.faults, bands, strict=True):
        assert band.start + T0 == window.in_effect
        assert band.end is None or band.end + T0 == window.reverted or window.instant


def test_the_report_reads_the_same_windows_from_the_sinks_events(tmp_path: Path) -> None:
    """Without fault events in the journal, the report reads the ``chaos_event`` points the
    sink wrote (tags id, kind, target; fields spec, window): the ramp is still one window."""
    journal = [e for e in EVENTS if not str(e["event"]).startswith("fault.")]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in journal))
    lines = []
    for e in EVENTS[2:8]:  # the ramp
        action = str(e["event"]).removeprefix("fault.")
        spec = f",spec=0i,window=0i,step={e['step']}i" if "spec" in e else ""
        lines.append(
            f"chaos_event,action={action},id={e['id']},kind=nft-loss,target=proxy "
            f'title="x"{spec} {int(e["ts"] * 1e9)}'
        )
    kill = EVENTS[8]  # the guard marks an irreversible apply: an instant, not an open band
    lines.append(
        f"chaos_event,action=apply,id=k,kind=kill,target=origin "
        f'title="x",spec=1i,window=0i,reversible=false {int(kill["ts"] * 1e9)}'
    )
    (tmp_path / "samples.lp").write_text("\n".join(lines) + "\n")
    ramp, killed = load_run(tmp_path).faults
    assert (ramp.id, ramp.start, ramp.end, ramp.steps) == ("r0", 5.0, 14.0, 3)
    assert (killed.id, killed.start, killed.end, killed.instant) == ("k", 20.0, 20.0, True)
