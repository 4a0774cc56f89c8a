"""Fault types: one contract (:mod:`.base`: ``Fault``, its ``Params`` and ``Handle``), one
module per family (:mod:`.netem`, :mod:`.nft`, :mod:`.signals`, :mod:`.sysctl`) and the
explicit list of them (:mod:`.registry`: ``fault_types()``, ``fault_type(kind)``).

When and how faults are applied and always reverted is the engine's (:mod:`.engine`).
"""

__all__ = ["base", "engine", "netem", "nft", "registry", "signals", "sysctl"]
