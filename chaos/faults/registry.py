"""The explicit list of fault families: importing this module registers every fault type."""

from __future__ import annotations

# One import per family module; each module registers its fault types with @register.
from chaos.faults import (
    netem,  # noqa: F401
    nft,  # noqa: F401
    reload,  # noqa: F401
    signals,  # noqa: F401
    sysctl,  # noqa: F401
)
