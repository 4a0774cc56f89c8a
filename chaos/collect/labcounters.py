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

import errno
import os
import socket
import struct

from chaos.collect.conntrack import open_nfnetlink
from chaos.errors import LabError
from chaos.kernel import netns
from chaos.lab.topology import LAB_COUNTERS, LAB_TABLE
from chaos.record.point import Sample, time_ns_of

# include/uapi/linux/netfilter/{nfnetlink,nf_tables}.h
NFT_GETOBJ = (10 << 8) | 19  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ
NFT_NEWOBJ = (10 << 8) | 18  # the answer
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NFPROTO_INET = 1
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NLA_TYPE_MASK = 0x3FFF  # without the nested / byte-order flags


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def counter_request(table: str, counter: str, seq: int) -> bytes:
    """``NFT_MSG_GETOBJ`` for the counter ``counter`` of table ``inet table``."""
    body = struct.pack("=BBH", NFPROTO_INET, 0, 0)  # nfgenmsg: family, version, res_id
    body += _attr(NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += _attr(NFTA_OBJ_NAME, counter.encode() + b"\0")
    body += _attr(NFTA_OBJ_TYPE, struct.pack(">I", NFT_OBJECT_COUNTER))
    return struct.pack("=IHHII", 16 + len(body), NFT_GETOBJ, NLM_F_REQUEST, seq, 0) + body


def _attrs(data: bytes | memoryview, start: int, end: int) -> dict[int, memoryview]:
    out = {}
    view = memoryview(data)
    pos = start
    while pos + 4 <= end:
        length, kind = struct.unpack_from("=HH", view, pos)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = view[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    return out


def parse_counter_reply(data: bytes | memoryview) -> tuple[int, int]:
    """(packets, bytes) from the answer to :func:`counter_request`; OSError for an error."""
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, 16)[0]
        raise OSError(code, os.strerror(code))
    if kind != NFT_NEWOBJ:
        raise OSError(errno.EPROTO, f"unexpected netlink message type {kind:#x}")
    obj = _attrs(data, 20, length)  # after nlmsghdr (16) and nfgenmsg (4)
    nested = obj.get(NFTA_OBJ_DATA)
    if nested is None:
        raise OSError(errno.EPROTO, "no counter data in the answer")
    counter = _attrs(nested, 0, len(nested))
    packets = struct.unpack(">Q", counter[NFTA_COUNTER_PACKETS][:8])[0]
    nbytes = struct.unpack(">Q", counter[NFTA_COUNTER_BYTES][:8])[0]
    return packets, nbytes


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
        fields: dict[str, int | float | bool | str] = {"packets": packets, "bytes": nbytes}
        if self._previous is not None:
            fields["packets_delta"] = packets - self._previous
        self._previous = packets
        return [Sample(self.measurement, self.tags, fields, time_ns_of(now))]

    def close(self) -> None:
        self._sock.close()
