"""conntrack per namespace: entries by TCP state (ctnetlink dump) and its statistics.

* Entries by TCP state come from a ctnetlink dump (NETLINK_NETFILTER, IPCTNL_MSG_CT_GET),
  read with the project's own lean parsing: no per-entry attribute tree, just one bytes
  regex over each received chunk that picks the TCP state byte out of
  ``CTA_PROTOINFO > CTA_PROTOINFO_TCP > CTA_PROTOINFO_TCP_STATE``. The nested-attribute
  headers that must precede it (types 4|NESTED, 1|NESTED, then a 5-byte attribute of type 1)
  occur nowhere else in a conntrack message, so the count is exact, and it runs in C.
* Statistics come from ``/proc/net/stat/nf_conntrack`` (one hexadecimal row per CPU, summed;
  ``entries`` is a global column, taken once), reported as increases since the previous
  sample: insert_failed, drop, early_drop, invalid, ... whatever columns the kernel has.
* ``entries`` and ``max`` come from ``net.netfilter.nf_conntrack_count`` / ``_max``.

When the kernel has no conntrack (no ``/proc/net/stat/nf_conntrack`` in the namespace) the
collector yields no sample: absent, not an error. A namespace whose rules never use
conntrack simply has zero entries.
"""

from __future__ import annotations

import re
import socket
import struct
from collections import Counter

from chaos.collect.base import deltas
from chaos.collect.kernel import PROC_NET
from chaos.kernel.nfnetlink import open_nfnetlink
from chaos.kernel.nsref import NetnsRef, ProcFile, open_proc_files
from chaos.record import schema
from chaos.record.point import Sample, time_ns_of

CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
NLM_F_REQUEST_DUMP = 0x301
NLMSG_ERROR = 2
NLMSG_DONE = 3

# enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h)
CT_TCP_STATES = {
    0: "none",
    1: "syn_sent",
    2: "syn_recv",
    3: "established",
    4: "fin_wait",
    5: "close_wait",
    6: "last_ack",
    7: "time_wait",
    8: "close",
    9: "syn_sent2",
}

# CTA_PROTOINFO (4, nested) > CTA_PROTOINFO_TCP (1, nested) > CTA_PROTOINFO_TCP_STATE (1, u8).
# The NESTED flag (0x8000) is accepted with or without.
_TCP_STATE = re.compile(rb"\x04[\x00\x80]..\x01[\x00\x80]\x05\x00\x01\x00(.)", re.DOTALL)


def parse_ct_stats(text: str) -> dict[str, int]:
    """Sum the per-CPU rows of /proc/net/stat/nf_conntrack; ``entries`` is not summed."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    names = lines[0]
    totals = dict.fromkeys(names, 0)
    for row in lines[1:]:
        for name, value in zip(names, row, strict=False):
            try:
                totals[name] += int(value, 16)
            except ValueError:
                continue
    if "entries" in totals and len(lines) > 1:
        totals["entries"] = int(lines[1][0], 16)  # the same global number on every row
    return totals


def count_tcp_states(chunk: bytes | bytearray | memoryview) -> Counter[int]:
    """TCP conntrack states in one chunk of ctnetlink dump messages."""
    return Counter(m[0] for m in _TCP_STATE.findall(chunk))


class Conntrack:
    """``conntrack`` for one namespace: entries, TCP states, statistics increases."""

    name = "conntrack"

    def __init__(
        self,
        ns: NetnsRef,
        *,
        states: bool = True,
        period: float = 0.0,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.ns = ns
        self.netns = ns.label
        self.period = period
        self.tags = {"netns": ns.label, **(tags or {})}
        self._files: dict[str, ProcFile] = ns.run(
            open_proc_files,
            {
                "stat": f"{PROC_NET}/stat/nf_conntrack",
                "count": "/proc/sys/net/netfilter/nf_conntrack_count",
                "max": "/proc/sys/net/netfilter/nf_conntrack_max",
            },
        )
        self.available = "stat" in self._files
        self._sock: socket.socket | None = None
        if self.available and states:
            try:
                self._sock = ns.run(open_nfnetlink)
            except OSError:
                self._sock = None  # no ctnetlink: states left out, statistics still there
        self._buf = bytearray(65536)
        self._seq = 0
        self._previous = self.stats() if self.available else None

    def stats(self) -> dict[str, int]:
        handle = self._files.get("stat")
        return parse_ct_stats(handle.read_text()) if handle else {}

    def tcp_states(self) -> dict[str, int] | None:
        """Entries per TCP state, or None when ctnetlink is not usable."""
        if self._sock is None:
            return None
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        request = struct.pack("=IHHII", 20, CT_GET, NLM_F_REQUEST_DUMP, self._seq, 0)
        self._sock.send(request + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0))
        counts: Counter[int] = Counter()
        pid = self._sock.getsockname()[0]
        while True:
            n = self._sock.recv_into(self._buf)
            head_type = struct.unpack_from("=H", self._buf, 4)[0] if n >= 36 else 0
            if head_type == NLMSG_ERROR and struct.unpack_from("=i", self._buf, 16)[0] < 0:
                self._sock.close()  # refused (no conntrack here): leave states out
                self._sock = None
                return None
            view = memoryview(self._buf)[:n]
            try:
                counts.update(count_tcp_states(view))
            finally:
                view.release()
            if _ends_with_done(self._buf, n, self._seq, pid):
                break
        return {name: counts.get(code, 0) for code, name in CT_TCP_STATES.items()}

    def _read_int(self, key: str) -> int | None:
        handle = self._files.get(key)
        if handle is None:
            return None
        try:
            return int(handle.read_text().strip())
        except ValueError:
            return None

    def sample(self, now: float) -> list[Sample]:
        if not self.available:
            return []
        fields: dict[str, int | float] = {}
        for key in ("count", "max"):
            value = self._read_int(key)
            if value is not None:
                fields["entries" if key == "count" else "max"] = value
        if "entries" in fields and fields.get("max"):
            fields["utilisation"] = round(fields["entries"] / fields["max"], 6)
        stats = self.stats()
        for name, moved in deltas(stats, self._previous).items():
            if name != "entries":
                fields[name] = moved
        self._previous = stats
        # the dump walks the whole (host-wide) conntrack hash, ~10 ms even when this
        # namespace has no entry: skip it when the namespace's own count says 0
        if fields.get("entries") == 0 and self._sock is not None:
            states: dict[str, int] | None = dict.fromkeys(CT_TCP_STATES.values(), 0)
        else:
            states = self.tcp_states()
        if states is not None:
            for name, value in states.items():
                fields[f"tcp_{name}"] = value
        if not fields:
            return []
        return [Sample(schema.CONNTRACK, dict(self.tags), fields, time_ns_of(now))]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for handle in self._files.values():
            handle.close()
        self._files = {}


def _ends_with_done(buf: bytearray, n: int, seq: int, pid: int) -> bool:
    """Whether a chunk ends with our dump's NLMSG_DONE (length, type, sequence and port id
    must all match, so entry data cannot be mistaken for it); no walk over the entries."""
    if n < 20:
        return False
    size, mtype, _flags, mseq, mpid = struct.unpack_from("=IHHII", buf, n - 20)
    return size == 20 and mtype == NLMSG_DONE and mseq == seq and mpid == pid
