"""Packets that reached the origin from the clients' own addresses: they bypassed the proxy.

The lab installs a named nftables counter in the origin namespace
(:meth:`chaos.lab.topology.Plan.nft_rulesets`). Through a proxy, every packet the origin
sees comes from the proxy; one from a client address escaped it, as when a late FIN finds
no conntrack entry at an intercepting gateway (seed 003) or no proxy socket (seed 000).

Measurement ``lab_escapes``: ``packets`` and ``bytes`` since the lab started, and
``packets_delta`` since the previous sample. It reads the counter with ``nft -j`` (one short
process per sample, a few milliseconds), since the counter is lab-owned and sampled at most
once a second.
"""

from __future__ import annotations

import json

from chaos.collect.base import Sample, time_ns_of
from chaos.errors import LabError
from chaos.lab import netns
from chaos.lab.topology import ESCAPE_COUNTER, LAB_TABLE


class EscapeCounter:
    name = "escapes"
    period = 0.0

    def __init__(self, namespace: str, *, tags: dict[str, str] | None = None) -> None:
        nft = netns.nft_binary()
        self.netns = namespace
        self.tags = {"netns": namespace, **(tags or {})}
        self._argv = [nft, "-j", "list", "counter", "inet", LAB_TABLE, ESCAPE_COUNTER]
        self._previous: int | None = None

    def read(self) -> tuple[int, int]:
        result = netns.run(self.netns, self._argv, timeout=5.0)
        if result.returncode != 0:
            raise LabError(f"cannot read the escape counter in {self.netns}: "
                           f"{result.stderr.strip()}")
        for item in json.loads(result.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"]), int(item["counter"]["bytes"])
        raise LabError(f"no counter {ESCAPE_COUNTER} in {self.netns}")

    def sample(self, now: float) -> list[Sample]:
        packets, nbytes = self.read()
        fields: dict[str, int | float | bool | str] = {"packets": packets, "bytes": nbytes}
        if self._previous is not None:
            fields["packets_delta"] = packets - self._previous
        self._previous = packets
        return [Sample("lab_escapes", self.tags, fields, time_ns_of(now))]

    def close(self) -> None:
        pass
