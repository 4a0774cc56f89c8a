"""What ``chaos faults list``, ``chaos revert-all``, ``chaos faults types``, ``chaos lab
down``/``status``, ``chaos doctor`` and ``chaos validate`` print, rendered by the views
beside what they show (the command line only parses and dispatches)."""

from __future__ import annotations

import io
import json
import socket
import time

import pytest
from rich.console import Console

from chaos.capabilities import Check, print_checks
from chaos.faults.base import Handle
from chaos.faults.engine import view
from chaos.faults.engine.guard import Leftover
from chaos.faults.engine.ledger import BadEntry, Entry
from chaos.faults.registry import fault_types
from chaos.kernel.processes import Owner
from chaos.lab import view as lab_view
from chaos.scenario import loader
from chaos.scenario import view as scenario_view


def console() -> Console:
    return Console(file=io.StringIO(), width=120, highlight=False, color_system=None)


def text(c: Console) -> str:
    return c.file.getvalue()  # type: ignore[attr-defined]


def entry(fault_id: str, kind: str, target: str, owner: Owner, age: float, **data) -> Entry:
    handle = Handle(kind, target, data, fault_id)
    return Entry(handle, time.time() - age, 1, owner, {})


GONE = Owner(999_999_999, 1, socket.gethostname())  # no such pid: its owner is gone
ELSEWHERE = Owner(4242, 1, "another-host")  # cannot be checked here: counts as running


@pytest.mark.parametrize(("seconds", "shown"), [(5, "5s"), (119, "119s"), (600, "10m"),
                                                (7300, "2h"), (-3, "0s")])
def test_age(seconds, shown):
    assert view.age(seconds) == shown


def test_faults_list_shows_each_entry_and_the_way_out_of_a_crash():
    out = console()
    entries = [
        entry("aaaaaaaaaaaa", "stop", "origin:[a-z]+", GONE, 7300, netns="chaos-x-origin"),
        entry("bbbbbbbbbbbb", "sysctl", "client", ELSEWHERE, 90),
    ]
    view.print_entries(out, entries, "/run/ledger")
    lines = text(out).splitlines()
    assert lines[0].split() == ["id", "kind", "target", "namespace", "since", "owner"]
    # the target is shown as written, not read as markup
    assert lines[1].split()[:4] == ["aaaaaaaaaaaa", "stop", "origin:[a-z]+", "chaos-x-origin"]
    assert "(2h ago)" in lines[1] and lines[1].rstrip().endswith("999999999 (gone)")
    assert lines[2].split()[:4] == ["bbbbbbbbbbbb", "sysctl", "client", "-"]
    assert "(90s ago)" in lines[2] and "4242@another-host (running)" in lines[2]
    assert "`chaos revert-all`" in lines[3]


def test_faults_list_without_entries_and_with_unreadable_ones():
    out, err = console(), console()
    view.print_entries(out, [], "/run/ledger")
    view.print_bad(err, [BadEntry("/run/ledger/x.json", "JSONDecodeError")], " (delete it)")  # type: ignore[arg-type]
    assert text(out) == "no active faults (ledger /run/ledger)\n"
    assert text(err) == "unreadable ledger entry /run/ledger/x.json: JSONDecodeError (delete it)\n"


def test_faults_list_json(capsys):
    view.print_entries_json([entry("cccccccccccc", "stop", "proxy", GONE, 10)])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["handle"]["id"] == "cccccccccccc" and row["owner_alive"] is False


def test_revert_all_prints_each_outcome_and_counts_the_failures():
    out, err = console(), console()
    one = entry("dddddddddddd", "stop", "proxy", ELSEWHERE, 10)
    done = [
        Leftover(one, "reverted"),
        Leftover(one, "gone"),
        Leftover(one, "left"),
        Leftover(one, "failed", "boom"),
    ]
    bad = [BadEntry("/run/ledger/x.json", "JSONDecodeError")]  # type: ignore[arg-type]
    assert view.print_reverts(out, err, done, bad) == 2
    assert text(out).splitlines() == [
        "reverted dddddddddddd stop on proxy",
        "gone dddddddddddd stop on proxy",
        "left dddddddddddd stop on proxy: owner pid 4242 on another-host is running (--force "
        "reverts it)",
    ]
    assert text(err).splitlines() == [
        "failed dddddddddddd stop on proxy: boom",
        "unreadable ledger entry /run/ledger/x.json: JSONDecodeError (inspect, then delete it)",
        "2 fault(s) not reverted; their ledger entries are kept",
    ]


def test_fault_types_lists_every_type_with_its_params():
    out = console()
    view.print_fault_types(out, verbose=False)
    shown = text(out)
    heads = [line.split()[0] for line in shown.splitlines() if line and not line[0].isspace()]
    for kind in fault_types():
        assert kind in heads
    assert "kill  (irreversible)" in shown
    assert shown.rstrip().endswith("list of per-step overrides).")


def test_lab_down_and_an_empty_status():
    out = console()
    lab_view.print_removed(out, "x", ["namespace chaos-x-client", "state file"])
    lab_view.print_removed(out, "y", [])
    lab_view.print_left_alone(out, "z", "pid 7 (chaos run)")
    assert lab_view.print_labs(out, []) == 0
    assert text(out).splitlines() == [
        "lab x: removed 2 items",
        "  - namespace chaos-x-client",
        "  - state file",
        "lab y: nothing to remove",
        "lab z: left alone, its owner pid 7 (chaos run) is running (--force to remove it anyway)",
        "no labs",
    ]


def test_doctor_shows_every_check_as_a_row_or_json(capsys):
    checks = [Check("netem", True, "sch_netem"), Check("nft", False, "", "apt install nft")]
    out = console()
    print_checks(out, checks)
    assert [line.split() for line in text(out).splitlines()] == [
        ["check", "detail", "fix"],
        ["netem", "yes", "sch_netem"],
        ["nft", "no", "apt", "install", "nft"],
    ]
    print_checks(out, checks, as_json=True)
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == ["netem", "nft"]


def test_validate_says_ok_and_warns_of_faults_that_stack():
    scenario = loader.parse(
        "name: stacking\nduration: 10s\nfaults:\n"
        "  - {type: stop, target: origin, at: 1s, for: 3s}\n"
        "  - {type: stop, target: origin, at: 2s, for: 3s}\n",
        "stacking.yaml",
    )
    out = console()
    scenario_view.print_valid(out, "stacking.yaml", scenario, [])
    lines = text(out).splitlines()
    assert lines[0] == "ok  stacking.yaml: scenario 'stacking'"
    assert lines[1].startswith("  warning: stacking.yaml: faults[0] and faults[1] (stop on origin")
