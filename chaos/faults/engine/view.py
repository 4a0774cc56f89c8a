"""The fault engine as the terminal shows it: the ledger's active faults (``chaos faults
list``), what ``chaos revert-all`` did to each, and the fault types with their params
(``chaos faults types``), so the command line only parses arguments and dispatches."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chaos.faults.engine.guard import Leftover
from chaos.faults.engine.ledger import BadEntry, Entry
from chaos.faults.registry import fault_types


def age(seconds: float) -> str:
    """``seconds`` as the terminal shows a fault's age: 90s, 12m, 3h."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def print_entries_json(entries: list[Entry]) -> None:
    """``chaos faults list --json``: every entry with whether its owner still runs."""
    rows = [{**e.to_json(), "owner_alive": e.owner_alive()} for e in entries]
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def print_entries(console: Console, entries: list[Entry], ledger_dir: object) -> None:
    """``chaos faults list``: one row per applied fault, with its owner and its age."""
    if not entries:
        console.print(f"no active faults (ledger {ledger_dir})")
        return
    columns = ("id", "kind", "target", "namespace", "since", "owner")
    table = Table(*columns, box=None, pad_edge=False)
    for e in entries:
        since = datetime.fromtimestamp(e.since).strftime("%H:%M:%S")
        state = "(running)" if e.owner_alive() else "[yellow](gone)[/]"
        where = "" if e.owner.here() else f"@{e.owner.host}"
        owner = f"{e.owner.pid}{where} {state}"
        namespace = str(e.handle.data.get("netns") or "-")
        table.add_row(
            e.handle.id,
            e.handle.kind,
            Text(e.handle.target),  # a ROLE:PATTERN target may contain [brackets]
            namespace,
            f"{since} ({age(time.time() - e.since)} ago)",
            owner,
        )
    console.print(table)
    if any(not e.owner_alive() for e in entries):
        console.print("faults whose owner is gone are left over from a crash: `chaos revert-all`")


def print_bad(err: Console, bad: list[BadEntry], advice: str = "") -> None:
    """Ledger entries that could not be read (``advice``: what to do with them)."""
    for b in bad:
        err.print(f"[red]unreadable ledger entry[/] {b.path}: {b.error}{advice}")


def print_nothing_to_revert(console: Console, ledger_dir: object) -> None:
    console.print(f"nothing to revert (ledger {ledger_dir} is empty)")


def print_reverts(
    out: Console, err: Console, done: Iterable[Leftover], bad: list[BadEntry]
) -> int:
    """``chaos revert-all``: each leftover as it is reverted, left or failed, then the
    unreadable entries; the number of faults not reverted (failed or unreadable)."""
    failed = len(bad)
    for one in done:
        if one.outcome == "left":
            out.print(
                Text.assemble(("left ", "yellow"), one.label, f": owner "
                              f"{one.entry.owner.describe()} is running (--force reverts it)"),
                soft_wrap=True,
            )  # fmt: skip
        elif one.outcome == "failed":
            failed += 1
            err.print(Text.assemble(("failed ", "bold red"), one.label, f": {one.error}"))
        else:
            style = "green" if one.outcome == "reverted" else "dim"
            out.print(Text.assemble((f"{one.outcome} ", style), one.label))
    print_bad(err, bad, " (inspect, then delete it)")
    if failed:
        err.print(f"{failed} fault(s) not reverted; their ledger entries are kept")
    return failed


def print_fault_types(console: Console, verbose: bool) -> None:
    """``chaos faults types``: each type, what it needs, and its params (``verbose``: with
    the first line of its module's docstring)."""
    for kind, cls in sorted(fault_types().items()):
        notes = [f"needs {', '.join(cls.features)}"] if cls.features else []
        if not cls.reversible:
            notes.append("irreversible")
        console.print(f"[bold]{kind}[/]" + (f"  ({'; '.join(notes)})" if notes else ""))
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        table = Table("param", "type", "default", "description", box=None, pad_edge=True)
        for row in cls.param_rows():
            table.add_row(*row)
        console.print(table)
        if doc and verbose:
            console.print("  " + doc[0])
    console.print(
        "\nTargets: client, gateway, proxy, origin, workers, ROLE:PATTERN, pid:N. "
        "Schedule keys: at, for, every, and params.ramp (a list of per-step overrides)."
    )
