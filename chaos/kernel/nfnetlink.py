"""The netfilter netlink family (NETLINK_NETFILTER): the socket, and the nf_tables
counter object request and its answer.

ctnetlink (conntrack's dump) and nf_tables speak through the same socket kind; a socket is
opened once in a namespace and kept, so a sample costs a send and a receive (microseconds)
instead of running ``nft`` or ``conntrack``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

__all__ = ["NETLINK_NETFILTER", "counter_request", "open_nfnetlink", "parse_counter_reply"]

NETLINK_NETFILTER = 12


def open_nfnetlink() -> socket.socket:
    """A NETLINK_NETFILTER socket (ctnetlink, nf_tables) in the calling thread's namespace."""
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_NETFILTER)
    sock.bind((0, 0))
    return sock


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
