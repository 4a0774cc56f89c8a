"""Fault types: one contract (:mod:`.base`: ``Fault``, its ``Params``, its ``HandleData``
and the ``Handle`` that carries it), one module per family (:mod:`.netem`, :mod:`.nft`,
:mod:`.signals`, :mod:`.sysctl`, :mod:`.reload`) and the explicit list of them
(:mod:`.registry`: ``fault_types()``, ``fault_type(kind)``).

When and how faults are applied and always reverted is the engine's (:mod:`.engine`).
"""

__all__ = ["base", "engine", "netem", "nft", "registry", "reload", "signals", "sysctl"]
