"""The contract every fault type passes; reusable wherever a fault runs (here, or in a VM).

A :class:`Case` says how to aim one fault type and how to see it in the kernel:

- ``make_target()`` returns the :class:`Target` (called once per check, so a case whose
  fault destroys its target, like ``kill``, can make a fresh one each time);
- ``observe(target)`` snapshots everything the fault may change (an nft ruleset, process
  states, sysctl values, a qdisc dump);
- ``is_applied(handle)`` says whether the fault is visible in the kernel;
- ``partial(handle)``, optional, does *part* of what ``apply`` does, by hand, as an
  interrupted apply would leave it.

:func:`run_contract` then checks, through the real code paths:

1. apply → visible; revert → the state equals the snapshot taken before; a second revert
   is harmless (for an irreversible fault: revert is a harmless no-op, twice);
2. revert works from the handle's JSON alone (as ``chaos revert-all`` runs it, in another
   process after a crash);
3. prepare + ledger write but no apply, then revert → the snapshot;
4. a partial apply (``partial``), then revert → the snapshot;
5. through :class:`FaultGuard`: the ledger holds the entry while applied, and is empty
   and the state equals the snapshot after the guard's block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.faults.base import Handle, Target
from chaos.faults.engine.guard import FaultGuard
from chaos.faults.engine.ledger import Ledger
from chaos.faults.registry import fault_type


@dataclass
class Case:
    kind: str
    params: dict[str, Any]
    make_target: Callable[[], Target]
    observe: Callable[[Target], Any]
    is_applied: Callable[[Handle], bool]
    partial: Callable[[Handle], None] | None = None

    def __str__(self) -> str:
        return self.kind


def _roundtrip(handle: Handle) -> Handle:
    return Handle.from_json(json.loads(json.dumps(handle.to_json())))


def check_apply_revert(case: Case) -> None:
    cls = fault_type(case.kind)
    target = case.make_target()
    before = case.observe(target)
    fault = cls.validate(target, case.params)
    handle = fault.prepare()
    assert case.observe(target) == before, f"{case.kind}: prepare changed the kernel"
    assert not case.is_applied(handle), f"{case.kind}: visible before apply"
    try:
        fault.apply(handle)
        assert case.is_applied(handle), f"{case.kind}: apply left no trace in the kernel"
        if cls.reversible:
            assert case.observe(target) != before, f"{case.kind}: apply changed nothing"
    finally:
        cls.revert(handle)
    if cls.reversible:
        assert case.observe(target) == before, f"{case.kind}: revert did not restore the state"
        assert not case.is_applied(handle)
    else:
        assert case.is_applied(handle), f"{case.kind}: an irreversible fault was undone?"
    after_first = case.observe(target)
    cls.revert(handle)  # the second revert: harmless
    assert case.observe(target) == after_first, f"{case.kind}: a second revert changed state"


def check_revert_from_json(case: Case) -> None:
    cls = fault_type(case.kind)
    target = case.make_target()
    before = case.observe(target)
    fault = cls.validate(target, case.params)
    handle = fault.prepare()
    try:
        fault.apply(handle)
    finally:
        fault_type(handle.kind).revert(_roundtrip(handle))
    if cls.reversible:
        assert case.observe(target) == before, f"{case.kind}: revert from JSON did not restore"


def check_revert_without_apply(case: Case, ledger_dir: Path) -> None:
    cls = fault_type(case.kind)
    target = case.make_target()
    before = case.observe(target)
    ledger = Ledger(ledger_dir)
    handle = cls.validate(target, case.params).prepare()
    ledger.write(handle)  # as the guard does, just before an apply that never happened
    (entry,), _bad = ledger.entries()
    cls.revert(entry.handle)
    cls.revert(entry.handle)
    ledger.remove(handle.id)
    assert case.observe(target) == before, f"{case.kind}: revert of a never-applied fault"


def check_revert_after_partial_apply(case: Case) -> None:
    if case.partial is None:
        return
    cls = fault_type(case.kind)
    target = case.make_target()
    before = case.observe(target)
    handle = cls.validate(target, case.params).prepare()
    try:
        case.partial(handle)
        if cls.reversible:
            assert case.observe(target) != before, f"{case.kind}: the partial apply did nothing"
    finally:
        cls.revert(_roundtrip(handle))
    if cls.reversible:
        assert case.observe(target) == before, f"{case.kind}: revert after a partial apply"


def check_guard_and_ledger(case: Case, ledger_dir: Path) -> None:
    cls = fault_type(case.kind)
    target = case.make_target()
    before = case.observe(target)
    ledger = Ledger(ledger_dir)
    with FaultGuard(ledger=ledger) as guard:
        handle = guard.apply(cls.validate(target, case.params))
        assert case.is_applied(handle)
        entries, bad = ledger.entries()
        expected = [handle.id] if cls.reversible else []
        assert [e.handle.id for e in entries] == expected and not bad
        assert guard.active == ([handle] if cls.reversible else [])
    assert ledger.entries() == ([], []), f"{case.kind}: ledger not empty after the guard"
    if cls.reversible:
        assert case.observe(target) == before, f"{case.kind}: the guard did not revert"


def run_contract(case: Case, ledger_dir: Path) -> None:
    check_apply_revert(case)
    check_revert_from_json(case)
    check_revert_without_apply(case, ledger_dir)
    check_revert_after_partial_apply(case)
    check_guard_and_ledger(case, ledger_dir)
