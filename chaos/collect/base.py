"""What every collector is: one source (sock_diag census, kernel counters, conntrack, ...)
in one network namespace, built once (it opens its sockets and files inside the namespace
then) and asked for samples again and again by :class:`~chaos.collect.sampler.Sampler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from chaos.record.point import Sample

__all__ = ["Collector", "deltas"]


@runtime_checkable
class Collector(Protocol):
    """A source of samples in one namespace.

    ``name`` identifies the source in ``collector_cost``; ``netns`` is the namespace label;
    ``period`` is the least number of seconds between two samples (0: every tick), so that
    an expensive source (the zombie scan) can run less often than the cheap ones.
    """

    name: str
    netns: str
    period: float

    def sample(self, now: float) -> list[Sample]:
        """Measure now; ``now`` is wall-clock seconds (``time.time()``) for the timestamps."""
        ...

    def close(self) -> None: ...


def deltas(current: Mapping[str, int], previous: Mapping[str, int] | None) -> dict[str, int]:
    """Per-key increase since ``previous``; a counter that went down (reset) counts from 0."""
    if previous is None:
        return {}
    out = {}
    for key, value in current.items():
        before = previous.get(key)
        if before is None:
            continue
        out[key] = value - before if value >= before else value
    return out
