"""The lab as the terminal shows it: ``chaos lab up``, ``status`` and ``down`` print
through these, so the command line only parses arguments and dispatches."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from chaos.lab import lab, topology
from chaos.lab.topology import LabState


def print_status(console: Console, state: LabState) -> None:
    """The lab's namespaces with their addresses, its processes with a probe of each, and
    where the proxy and origin listen."""
    table = Table("role", "namespace", "addresses", box=None, pad_edge=False)
    for role, namespace in state.namespaces.items():
        status = topology.namespace_status(role, namespace)
        addresses = ", ".join(status.addresses) if status.exists else "[red]missing[/]"
        table.add_row(role, namespace, addresses)
    console.print(table)
    procs = Table("process", "pid", "alive", "answers", box=None, pad_edge=False)
    for item in lab.health(state):
        answer = "[green]ok[/]" if item.probe == "ok" else f"[red]{item.probe}[/]"
        procs.add_row(
            f"{item.role} ({item.name})",
            str(item.pid),
            "[green]yes[/]" if item.alive else "[red]no[/]",
            answer,
        )
    console.print(procs)
    console.print(
        f"proxy endpoint: {state.proxy['host']}:{state.proxy['port']} "
        f"({state.proxy['kind']}, {state.proxy['mode']}); origin: "
        f"{state.origin['host']}:{state.origin['port']}; run dir: {state.run_dir}"
    )


def print_up(console: Console, state: LabState, run_path: Path, tls: bool) -> None:
    """A lab just built: its status and how to send traffic through it (``tls``: the
    proxy terminates TLS with the lab's CA, kept in the run directory)."""
    name = state.name
    console.print(f"lab [bold]{name}[/] is up; logs in {run_path}")
    print_status(console, state)
    ca = run_path / "proxy" / "tls" / "ca.crt"
    curl = f"curl -s --cacert {ca} https" if tls else "curl -s http"
    console.print(
        f"\nsend traffic from the client namespace, e.g.\n"
        f"  ip netns exec {state.namespaces['client']} {curl}"
        f"://{state.proxy['host']}:{state.proxy['port']}/\n"
        f"remove it with: chaos lab down {name}"
    )


def print_labs(console: Console, names: list[str]) -> int:
    """``chaos lab status``: each lab's status; 1 when one has namespaces but no state."""
    if not names:
        console.print("no labs")
        return 0
    code = 0
    for name in names:
        state = LabState.load(name)
        console.print(f"[bold]lab {name}[/]")
        if state is None:
            console.print(
                "  [yellow]namespaces without a state file (a crashed run?)[/]; "
                f"remove them with `chaos lab down {name}`"
            )
            code = 1
            continue
        print_status(console, state)
    return code


def print_left_alone(console: Console, name: str, owner: str) -> None:
    console.print(
        f"lab [bold]{name}[/]: left alone, its owner {owner} is running "
        "(--force to remove it anyway)"
    )


def print_removed(console: Console, name: str, removed: list[str]) -> None:
    if removed:
        console.print(f"lab [bold]{name}[/]: removed {len(removed)} items")
        for item in removed:
            console.print(f"  - {item}")
    else:
        console.print(f"lab [bold]{name}[/]: nothing to remove")
