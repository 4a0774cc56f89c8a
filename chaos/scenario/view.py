"""Scenarios as the terminal shows them: what ``chaos validate`` says of a file that
passed, and the builtin scenarios (``chaos scenarios``), so the command line only parses
arguments and dispatches."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chaos.errors import Problem
from chaos.faults.engine.schedule import overlap_warnings
from chaos.scenario import loader
from chaos.scenario.model import Scenario


def print_valid(console: Console, name: str, scenario: Scenario, warnings: list[Problem]) -> None:
    """A file that passed: ``ok``, then the host checks that only warn (``--other-host``)
    and the faults that stack in time."""
    console.print(f"[green]ok[/]  {name}: scenario {scenario.name!r}")
    for warning in warnings:
        console.print(Text.assemble(("  warning: ", "yellow"), warning.render(name)))
    for overlap in overlap_warnings(scenario.faults, scenario.duration):
        console.print(Text.assemble(("  warning: ", "yellow"), f"{name}: {overlap}"))


def print_builtins(console: Console) -> None:
    """Each builtin scenario with its headline, variants and controls."""
    table = Table("scenario", "description", box=None, pad_edge=False)
    for item in loader.describe_builtins():
        table.add_row(f"[bold]{item.name}[/]", item.headline)
        if item.variants or item.controls:
            table.add_row(
                "",
                f"[dim]variants: {', '.join(item.variants) or '-'}; "
                f"controls: {', '.join(item.controls) or '-'}[/]",
            )
    console.print(table)
    console.print(
        "run one with `chaos run SCENARIO --variant NAME`; a control removes the cause, so "
        "the signature must fail on it (exit 10)"
    )
