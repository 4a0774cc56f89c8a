"""A lean NETLINK_SOCK_DIAG (inet_diag) reader: ``socket`` + ``struct`` only.

Why not pyroute2's DiagSocket: it builds a dict tree per socket and took 30 s for 250k
sockets on these machines. Here a dump is read chunk by chunk into one reusable buffer and
handed to the caller as *runs* of equally sized records, which the caller digests with
``struct.iter_unpack`` / stride slicing, i.e. in C, never one Python statement per socket.

Wire format (include/uapi/linux/inet_diag.h), all host byte order unless noted::

    nlmsghdr        16 bytes: len u32, type u16, flags u16, seq u32, pid u32
    inet_diag_msg   72 bytes, at record offset 16:
      +16 family u8   +17 state u8   +18 timer u8   +19 retrans u8
      +20 sport be16  +22 dport be16 +24 src[16]    +40 dst[16]
      +56 ifindex u32 +60 cookie u64 +68 expires u32 (ms)
      +72 rqueue u32  +76 wqueue u32 +80 uid u32    +84 inode u32
    then netlink attributes (rtattr: len u16, type u16, payload, padded to 4)

TIME_WAIT sockets carry no attribute but MARK, and that only for CAP_NET_ADMIN readers (88 or
96-byte records). Full sockets always carry a few (SHUTDOWN, SOCKOPT, CGROUP_ID, and MARK for
CAP_NET_ADMIN readers: 116 or 124 bytes here), so a dump that mixes both has two record
sizes; callers that care about speed ask for TIME_WAIT and the rest in separate dumps so that
each dump is a single run per chunk.

The kernel fills at most one ~32 KiB skb per ``recvmsg`` for a dump (netlink caps
``max_recvmsg_len`` there), so a bigger user buffer buys nothing; 64 KiB leaves headroom.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from chaos.errors import CapabilityError

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18  # the old request: the only one that dumps both families in one walk
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
AF_ANY = 0  # "both IPv4 and IPv6": sent as a TCPDIAG_GETSOCK request

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300

# inet_diag request attributes and reply extensions
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO = 2  # reply attribute type; request bit is 1 << (INET_DIAG_INFO - 1)
EXT_INFO = 1 << (INET_DIAG_INFO - 1)

# bytecode operations (enum in inet_diag.h)
BC_JMP = 1
BC_S_GE = 2
BC_S_LE = 3
BC_D_GE = 4
BC_D_LE = 5
BC_S_COND = 7
BC_S_EQ = 11
BC_D_EQ = 12

# TCP states as numbered by the kernel (include/net/tcp_states.h)
ESTABLISHED = 1
SYN_SENT = 2
SYN_RECV = 3
FIN_WAIT1 = 4
FIN_WAIT2 = 5
TIME_WAIT = 6
CLOSE = 7
CLOSE_WAIT = 8
LAST_ACK = 9
LISTEN = 10
CLOSING = 11
NEW_SYN_RECV = 12  # request sockets; the kernel reports them as SYN_RECV

STATE_NAMES: dict[int, str] = {
    ESTABLISHED: "established",
    SYN_SENT: "syn_sent",
    SYN_RECV: "syn_recv",
    FIN_WAIT1: "fin_wait1",
    FIN_WAIT2: "fin_wait2",
    TIME_WAIT: "time_wait",
    CLOSE: "close",
    CLOSE_WAIT: "close_wait",
    LAST_ACK: "last_ack",
    LISTEN: "listen",
    CLOSING: "closing",
}
ALL_STATES = frozenset(STATE_NAMES)

# idiag_timer values
TIMER_NONE = 0
TIMER_RETRANS = 1
TIMER_KEEPALIVE = 2  # sk_timer: keepalive, also the orphaned FIN_WAIT2 timer
TIMER_TIME_WAIT = 3
TIMER_PROBE0 = 4  # zero-window probe

HDR = struct.Struct("=IHHII")
REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2: family, protocol, ext, pad, states
REQ_COMPAT_HEAD = struct.Struct("=BBBB")  # inet_diag_req: family, src_len, dst_len, ext
REQ_COMPAT_TAIL = struct.Struct("=II")  # ...then the 48-byte id, states, dbs
SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order)
SOCKID_TAIL = struct.Struct("=IQ")  # ifindex, cookie (host order)
U32 = struct.Struct("=I")
U16 = struct.Struct("=H")
RTA = struct.Struct("=HH")

MSG_SIZE = 88  # nlmsghdr + inet_diag_msg: the size of a record without attributes
OFF_STATE = 17
OFF_TIMER = 18
OFF_SPORT = 20
OFF_DPORT = 22
OFF_SRC = 24
OFF_DST = 40
OFF_COOKIE = 60
OFF_EXPIRES = 68
OFF_INODE = 84

RECV_BUF = 65536
NO_COOKIE = 0xFFFFFFFFFFFFFFFF  # INET_DIAG_NOCOOKIE in both u32 halves


def states_mask(states: Sequence[int] | frozenset[int]) -> int:
    mask = 0
    for state in states:
        mask |= 1 << state
    if mask & (1 << SYN_RECV):
        mask |= 1 << NEW_SYN_RECV  # request sockets live in state 12 internally
    return mask


class DiagError(CapabilityError):
    """sock_diag is missing or refused a request."""


# --- bytecode filters ----------------------------------------------------------------------
#
# A compiled block follows iproute2's ss convention: "true" falls off the end of the block,
# "false" jumps to end + 4. Each op is {code u8, yes u8, no u16}; the kernel's audit walks the
# "yes" chain, which in this linear layout is every op in order.


def _op(code: int, yes: int, no: int) -> bytes:
    return struct.pack("=BBH", code, yes, no)


def bc_port(code: int, port: int) -> bytes:
    """A port comparison (BC_S_GE, BC_S_LE, BC_D_GE, BC_D_LE, BC_S_EQ, BC_D_EQ)."""
    return _op(code, 8, 12) + _op(0, 0, port)


def bc_source_net(family: int, network: str, prefix_len: int) -> bytes:
    """Local address inside ``network/prefix_len`` (BC_S_COND with an inet_diag_hostcond:
    family u8, prefix_len u8, pad, port int (-1: any), the address)."""
    cond = struct.pack("=BBxxi", family, prefix_len, -1) + socket.inet_pton(family, network)
    size = 4 + len(cond)
    return _op(BC_S_COND, size, size + 4) + cond


def _patch_false(block: bytes, reloc: int) -> bytes:
    """Move the block's "false" exits (jumps to len + 4) further out by ``reloc`` bytes."""
    out = bytearray(block)
    pos = 0
    length = len(block)
    while pos < length:
        code, yes, no = struct.unpack_from("=BBH", out, pos)
        if no == length - pos + 4:
            struct.pack_into("=BBH", out, pos, code, yes, no + reloc)
        pos += yes
    return bytes(out)


def bc_and(*blocks: bytes) -> bytes:
    out = b""
    for block in blocks:
        out = _patch_false(out, len(block)) + block if out else block
    return out


def bc_not(block: bytes) -> bytes:
    return block + _op(BC_JMP, 4, 8)


def outbound_filter(lo: int, hi: int, listen_ports: Sequence[int]) -> bytes:
    """Sockets that hold an ephemeral port: local port in [lo, hi] and not a listening port.

    Inbound connections have the listener's port as their local port; outbound ones got a
    port from ip_local_port_range. (A socket whose listener is gone but whose port lies in the
    range counts as outbound: the kernel cannot tell either.)
    """
    blocks = [bc_port(BC_S_GE, lo), bc_port(BC_S_LE, hi)]
    blocks += [bc_not(bc_port(BC_S_EQ, p)) for p in sorted(set(listen_ports)) if lo <= p <= hi]
    return bc_and(*blocks)


# --- requests ------------------------------------------------------------------------------


def build_request(
    family: int,
    states: int,
    *,
    ext: int = 0,
    bytecode: bytes = b"",
    flags: int = NLM_F_REQUEST | NLM_F_DUMP,
    msg_type: int = SOCK_DIAG_BY_FAMILY,
    seq: int = 1,
    sockid: bytes = b"\0" * 48,
) -> bytes:
    """A sock_diag request; ``family`` :data:`AF_ANY` makes the old TCPDIAG_GETSOCK form.

    Why the old form: a v2 request names one family, so IPv4 and IPv6 would take two walks
    of the kernel's whole established hash (about 25 ms each at 250k sockets here); the old
    request is answered with ``AF_UNSPEC`` inside the kernel and covers both in one walk.
    """
    if family == AF_ANY and msg_type == SOCK_DIAG_BY_FAMILY:
        msg_type = TCPDIAG_GETSOCK
        body = REQ_COMPAT_HEAD.pack(0, 0, 0, ext) + sockid + REQ_COMPAT_TAIL.pack(states, 0)
    else:
        body = REQ.pack(family, socket.IPPROTO_TCP, ext, states) + sockid
    if bytecode:
        attr_len = 4 + len(bytecode)
        body += RTA.pack(attr_len, INET_DIAG_REQ_BYTECODE) + bytecode
        body += b"\0" * (-attr_len % 4)
    return HDR.pack(16 + len(body), msg_type, flags, seq, 0) + body


def pack_sockid(
    sport: int, dport: int, src: bytes, dst: bytes, ifindex: int = 0, cookie: int = NO_COOKIE
) -> bytes:
    return SOCKID.pack(sport, dport, src.ljust(16, b"\0"), dst.ljust(16, b"\0")) + (
        SOCKID_TAIL.pack(ifindex, cookie)
    )


# --- the socket ----------------------------------------------------------------------------


def _new_diag_socket() -> socket.socket:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
        )
    except OSError as exc:
        raise DiagError(
            f"cannot open a sock_diag netlink socket: {exc.strerror}",
            "the kernel needs CONFIG_INET_DIAG and CONFIG_INET_TCP_DIAG (module tcp_diag)",
        ) from None
    sock.bind((0, 0))
    return sock


CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_effective(cap: int) -> None:
    """Best effort: clear one capability from this *thread's* effective set."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return
    data[cap // 32].effective &= ~(1 << (cap % 32))
    libc.capset(ctypes.byref(header), data)


def open_diag_socket(*, net_admin: bool = False) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the calling thread's namespace.

    By default the socket is created from a helper thread without CAP_NET_ADMIN in its
    effective set. The kernel checks the opener's credentials when it fills replies: without
    that capability it leaves out the socket mark attribute (8 bytes and a little work per
    socket, ~10% of a TIME_WAIT dump), and the census needs nothing more than a reader's
    rights anyway. ``net_admin=True`` keeps it (needed for SOCK_DESTROY). Capabilities are
    per thread and the helper thread inherits the caller's namespace, so nothing leaks.
    """
    if net_admin:
        return _new_diag_socket()
    box: dict[str, object] = {}

    def opener() -> None:
        try:
            _drop_effective(CAP_NET_ADMIN)
            box["sock"] = _new_diag_socket()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=opener, name="sock-diag-open", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]


@dataclass
class Run:
    """``count`` consecutive records of ``size`` bytes each, in ``view``."""

    size: int
    count: int
    view: memoryview


class InetDiag:
    """One sock_diag socket, bound to the namespace it was opened in, reused for every dump."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._refs = 1  # collectors of one namespace share one socket: see acquire()
        self._buf = bytearray(RECV_BUF)
        self._view = memoryview(self._buf)
        self._seq = 0
        self._clean = True  # False while a dump is half-read

    @classmethod
    def open_in(cls, ns: object, *, net_admin: bool = False) -> InetDiag:
        """Open inside namespace ``ns`` (a :class:`~chaos.kernel.nsref.NetnsRef`)."""
        return cls(ns.run(open_diag_socket, net_admin=net_admin))  # type: ignore[attr-defined]

    def acquire(self) -> InetDiag:
        """One more user of this socket; each user calls :meth:`close` once.

        Sharing is for collectors that run one after the other (the sampler's thread): a
        socket carries one request at a time.
        """
        self._refs += 1
        return self

    def close(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self._view.release()
            self.sock.close()

    def _send(self, request: bytes) -> None:
        if not self._clean:
            self._drain()
        self.sock.send(request)

    def _drain(self) -> None:
        """Throw away what a dump abandoned half-way left in the socket."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    self.sock.recv_into(self._buf)
                except BlockingIOError:
                    break
        finally:
            self.sock.setblocking(True)
        self._clean = True

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def dump(
        self,
        family: int,
        states: int,
        *,
        ext: int = 0,
        bytecode: bytes = b"",
    ) -> Iterator[Run]:
        """Dump TCP sockets of ``family`` whose state bit is in ``states``; yield record runs.

        Each :class:`Run` views the shared receive buffer: digest it before asking for the
        next one. Stopping the iteration early is allowed (the rest is drained later), but
        no other request may go out on this socket while the dump is being read.
        """
        seq = self._next_seq()
        self._send(build_request(family, states, ext=ext, bytecode=bytecode, seq=seq))
        self._clean = False
        reply = TCPDIAG_GETSOCK if family == AF_ANY else SOCK_DIAG_BY_FAMILY
        view = self._view
        buf = self._buf
        recv_into = self.sock.recv_into
        while True:
            n = recv_into(buf)
            if n == 0:
                self._clean = True
                raise DiagError("sock_diag dump ended without NLMSG_DONE", None)
            off = 0
            while off < n:
                size, mtype = HDR.unpack_from(buf, off)[:2]
                if mtype != reply:
                    if mtype == NLMSG_DONE:
                        self._clean = True
                        return
                    if mtype == NLMSG_ERROR:
                        self._clean = True
                        err = -struct.unpack_from("=i", buf, off + 16)[0]
                        raise _dump_error(err)
                    off += size  # anything else (NLMSG_NOOP): skip
                    continue
                count = uniform_prefix(view, off, n, size, reply)
                end = off + count * size
                yield Run(size, count, view[off:end])
                if self._seq != seq:
                    # another request went out on this socket while the dump was paused:
                    # it drained the rest of this dump, so there is nothing left to read
                    raise RuntimeError("sock_diag socket reused while a dump was being read")
                off = end

    def dump_records(
        self, family: int, states: int, *, ext: int = 0, bytecode: bytes = b""
    ) -> Iterator[bytes]:
        """One ``bytes`` per socket: the slow, simple path for small dumps and tests."""
        for run in self.dump(family, states, ext=ext, bytecode=bytecode):
            size = run.size
            data = run.view.tobytes()
            for i in range(run.count):
                yield data[i * size : (i + 1) * size]

    def destroy(
        self, family: int, sport: int, dport: int, src: bytes, dst: bytes, cookie: int
    ) -> None:
        """SOCK_DESTROY one socket (CONFIG_INET_DIAG_DESTROY; open with ``net_admin=True``)."""
        sockid = pack_sockid(sport, dport, src, dst, 0, cookie)
        seq = self._next_seq()
        request = build_request(
            family,
            0xFFFFFFFF,
            flags=NLM_F_REQUEST | NLM_F_ACK,
            msg_type=SOCK_DESTROY,
            seq=seq,
            sockid=sockid,
        )
        self._send(request)
        n = self.sock.recv_into(self._buf)
        if n >= 20 and HDR.unpack_from(self._buf, 0)[1] == NLMSG_ERROR:
            err = -struct.unpack_from("=i", self._buf, 16)[0]
            if err:
                raise OSError(err, f"SOCK_DESTROY: {os.strerror(err)}")


def _dump_error(err: int) -> Exception:
    if err in (errno.ENOENT, errno.EOPNOTSUPP):
        return DiagError(
            f"sock_diag has no TCP handler: {os.strerror(err)}",
            "load the tcp_diag module (modprobe tcp_diag) or build with CONFIG_INET_TCP_DIAG",
        )
    if err == errno.EINVAL:
        return DiagError("sock_diag rejected the request (bad filter?)", None)
    return OSError(err, f"sock_diag dump failed: {os.strerror(err)}")


def uniform_prefix(
    view: memoryview, off: int, end: int, size: int, mtype: int = SOCK_DIAG_BY_FAMILY
) -> int:
    """How many consecutive records of exactly ``size`` bytes start at ``off``.

    Checked with stride slices, not a loop: if the length field (low two bytes; a record in a
    <64 KiB chunk has zeros above) and the type's low byte at every multiple of ``size`` say
    "``size`` bytes, a sock_diag reply", then by induction every one of them is a true record
    start. The first mismatch ends the run.
    """
    whole = (end - off) // size
    if whole <= 1:
        return 1
    seg = view[off : off + whole * size]
    count = whole
    for pos, expect in (
        (0, size & 0xFF),
        (1, size >> 8),
        (4, mtype),
    ):
        col = seg[pos::size].tobytes()
        rest = len(col.lstrip(bytes((expect,))))
        if rest:
            count = min(count, whole - rest)
    return max(count, 1)


def find_attr(record: bytes | memoryview, attr_type: int, start: int = MSG_SIZE) -> int | None:
    """Offset of the payload of the first attribute ``attr_type`` in one record, or None."""
    size = U32.unpack_from(record, 0)[0]
    off = start
    while off + 4 <= size:
        alen, atype = RTA.unpack_from(record, off)
        if alen < 4:
            return None
        if atype & 0x3FFF == attr_type:
            return off + 4
        off += (alen + 3) & ~3
    return None


def addr_text(family: int, raw: bytes) -> str:
    """Text form of a 16-byte sock_diag address field."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def addr_bytes(family: int, text: str) -> bytes:
    packed = socket.inet_pton(family, text)
    return packed.ljust(16, b"\0")


def lookup(
    diag: InetDiag,
    family: int,
    src: bytes,
    sport: int,
    dst: bytes,
    dport: int,
) -> bytes | None:
    """The one socket whose local end is ``src:sport`` and remote end ``dst:dport``, or None.

    An exact-match request (no dump): the kernel looks the 4-tuple up in its hash tables, so
    this costs microseconds whatever the number of sockets.
    """
    sockid = pack_sockid(sport, dport, src, dst)
    request = build_request(
        family, 0xFFFFFFFF, flags=NLM_F_REQUEST, seq=diag._next_seq(), sockid=sockid
    )
    diag._send(request)
    n = diag.sock.recv_into(diag._buf)
    mtype = HDR.unpack_from(diag._buf, 0)[1]
    if mtype == NLMSG_ERROR:
        err = -struct.unpack_from("=i", diag._buf, 16)[0]
        if err in (errno.ENOENT, 0):
            return None
        raise OSError(err, f"sock_diag lookup failed: {os.strerror(err)}")
    size = U32.unpack_from(diag._buf, 0)[0]
    return bytes(diag._buf[: min(size, n)])
