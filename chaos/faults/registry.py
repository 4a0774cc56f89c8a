"""Every fault type, named here and nowhere else: :func:`fault_types` is the list a scenario
can use, :func:`fault_type` finds one by its ``kind``.

A new fault type is a class in its family's module (netem, nft, signals, sysctl, reload) and one
entry in :data:`SCENARIO_TYPES`; importing this module imports the families, nothing is
filled in as a side effect of an import elsewhere.
"""

from __future__ import annotations

from chaos.agent.client import RemoteFault
from chaos.errors import FaultError
from chaos.faults.base import Fault
from chaos.faults.netem import Netem
from chaos.faults.nft import NftFilter, NftLoss, NftMangle
from chaos.faults.reload import Reload, Restart
from chaos.faults.signals import Kill, Stop
from chaos.faults.sysctl import SysctlWindow

__all__ = ["LEDGER_TYPES", "SCENARIO_TYPES", "fault_type", "fault_types"]

#: the fault types a scenario may name in ``faults[].type``
SCENARIO_TYPES: tuple[type[Fault], ...] = (
    Netem,
    NftFilter,
    NftLoss,
    NftMangle,
    Stop,
    Kill,
    SysctlWindow,
    Reload,
    Restart,
)


def fault_types() -> dict[str, type[Fault]]:
    """The scenario's fault types by kind."""
    types: dict[str, type[Fault]] = {}
    for cls in SCENARIO_TYPES:
        if cls.kind in types:
            raise RuntimeError(f"fault kind {cls.kind} listed twice")
        types[cls.kind] = cls
    return types


#: every type a ledger entry may name: the scenario's, and the fault held by an agent (not
#: a scenario type, but its entries revert like any other: `chaos revert-all`)
LEDGER_TYPES: tuple[type[Fault], ...] = (*SCENARIO_TYPES, RemoteFault)


def fault_type(kind: str) -> type[Fault]:
    """The type of ``kind`` (a scenario's, or a ledger entry's); FaultError naming the
    scenario's types otherwise."""
    try:
        return next(cls for cls in LEDGER_TYPES if cls.kind == kind)
    except StopIteration:
        raise FaultError(
            f"unknown fault type {kind!r}",
            f"known fault types: {', '.join(sorted(fault_types()))}",
        ) from None
