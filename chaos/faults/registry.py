"""The explicit list of fault families: importing this module registers every fault type."""

from __future__ import annotations

# One import per family module; each module registers its fault types with @register.
