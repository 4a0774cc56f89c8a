"""The lab's own packet counters: named nftables counters the lab installs, one measurement each.

:meth:`chaos.lab.topology.Plan.nft_rulesets` installs them (:data:`LAB_COUNTERS` says where):

``lab_escapes`` (origin)
    packets that reached the origin from the clients' own addresses. Through a proxy, every
    packet the origin sees comes from the proxy; one from a client address escaped it, as when
    a late FIN finds no conntrack entry at an intercepting gateway (seed 003) or no proxy
    socket (seed 000).
``lab_resets`` (gateway)
    TCP resets the gateway forwards toward the clients: what a capture at the client shows
    when the proxy resets connections, e.g. a listener answering a data segment whose ACK a
    middlebox rewrote (seed 004). The gateway sees only the client side, so the proxy's
    resets toward the origin are not in it.

Fields: ``packets`` and ``bytes`` since the lab started, and ``packets_delta`` since the
previous sample. A sample reads the counter with ``nft -j`` (one short process, a few
milliseconds): the counters are lab-owned and sampled at most once a second.
"""

from __future__ import annotations

import json

from chaos.collect.base import Sample, time_ns_of
from chaos.errors import LabError
from chaos.lab import netns
from chaos.lab.topology import LAB_COUNTERS, LAB_TABLE


class LabCounter:
    """One of :data:`~chaos.lab.topology.LAB_COUNTERS`, read in ``namespace``."""

    period = 0.0

    def __init__(
        self, namespace: str, measurement: str, *, tags: dict[str, str] | None = None
    ) -> None:
        if measurement not in LAB_COUNTERS:
            raise ValueError(f"no lab counter {measurement!r}; known: {', '.join(LAB_COUNTERS)}")
        self.counter = LAB_COUNTERS[measurement].counter
        self.measurement = self.name = measurement
        self.netns = namespace
        self.tags = {"netns": namespace, **(tags or {})}
        nft = netns.nft_binary()
        self._argv = [nft, "-j", "list", "counter", "inet", LAB_TABLE, self.counter]
        self._previous: int | None = None

    def read(self) -> tuple[int, int]:
        result = netns.run(self.netns, self._argv, timeout=5.0)
        if result.returncode != 0:
            raise LabError(
                f"cannot read the lab counter {self.counter} in {self.netns}: "
                f"{result.stderr.strip()}"
            )
        for item in json.loads(result.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"]), int(item["counter"]["bytes"])
        raise LabError(f"no counter {self.counter} in {self.netns}")

    def sample(self, now: float) -> list[Sample]:
        packets, nbytes = self.read()
        fields: dict[str, int | float | bool | str] = {"packets": packets, "bytes": nbytes}
        if self._previous is not None:
            fields["packets_delta"] = packets - self._previous
        self._previous = packets
        return [Sample(self.measurement, self.tags, fields, time_ns_of(now))]

    def close(self) -> None:
        pass
