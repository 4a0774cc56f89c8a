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
previous sample. A sample asks nf_tables for the counter object itself (``NFT_MSG_GETOBJ``
on a netlink socket opened once in the namespace): a few microseconds, where running
``nft -j list counter`` cost 11 – 12 ms a sample, the dearest collector of a tick.
"""

from __future__ import annotations

import socket

from chaos.errors import LabError
from chaos.kernel import netns
from chaos.kernel.nfnetlink import counter_request, open_nfnetlink, parse_counter_reply
from chaos.lab.topology import LAB_COUNTERS, LAB_TABLE
from chaos.record.point import FieldValue, Sample, time_ns_of


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
        self._sock: socket.socket = netns.run_in(namespace, open_nfnetlink)
        self._buf = bytearray(4096)
        self._seq = 0
        self._previous: int | None = None

    def read(self) -> tuple[int, int]:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        try:
            self._sock.send(counter_request(LAB_TABLE, self.counter, self._seq))
            n = self._sock.recv_into(self._buf)
            return parse_counter_reply(memoryview(self._buf)[:n])
        except OSError as exc:
            raise LabError(
                f"cannot read the lab counter {self.counter} in {self.netns}: {exc.strerror}",
                "the lab's nftables table may be gone: is the lab still up (`chaos lab status`)?",
            ) from None

    def sample(self, now: float) -> list[Sample]:
        packets, nbytes = self.read()
        fields: dict[str, FieldValue] = {"packets": packets, "bytes": nbytes}
        if self._previous is not None:
            fields["packets_delta"] = packets - self._previous
        self._previous = packets
        return [Sample(self.measurement, self.tags, fields, time_ns_of(now))]

    def close(self) -> None:
        self._sock.close()
