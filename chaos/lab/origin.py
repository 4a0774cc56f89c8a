"""The origin server: a fast TCP/HTTP server whose connection teardown is configurable.

It runs in the lab's "origin" namespace behind the proxy under test. Stdlib only, so it starts
in a few tens of milliseconds::

    python -m chaos.lab.origin --config-json '<json>' [--stats-file PATH] [--access-log PATH]

It prints exactly one line ``READY <port>`` (flushed) once every worker is listening, serves
until SIGTERM/SIGINT, then closes everything, writes the stats file and exits 0. Bad
configuration: one line on stderr, exit 2. Other start-up failures (port in use, ...): one
line on stderr, exit 1. No tracebacks either way.

Process model
    The parent binds ``workers`` listening sockets to the same port with ``SO_REUSEPORT``
    (so a config error or a busy port is reported before anything is forked, and the kernel
    spreads new connections over the workers without a shared accept lock), then forks one
    worker per socket. Each worker is a single-threaded, level-triggered ``select.epoll``
    loop with a ``heapq`` of timers. Workers set ``PR_SET_PDEATHSIG`` so they die with the
    parent; the parent forwards SIGTERM, collects each worker's counters over a pipe and
    reaps them. Parent and workers share one process group: to SIGSTOP/SIGCONT "the origin",
    signal the group (start it with ``start_new_session=True`` and use ``os.killpg``).

Socket options
    ``SO_KEEPALIVE``/``TCP_KEEP*``, ``SO_LINGER {1,0}``, ``SO_RCVBUF``, ``TCP_NODELAY`` and
    ``TCP_DEFER_ACCEPT`` are set on the listeners only: Linux copies them to every accepted
    socket (keepalive timer included), which saves four syscalls per connection.

Protocols
    ``http``: a request is a head ending in ``\\r\\n\\r\\n`` plus a ``Content-Length`` body,
    which is read and discarded (chunked bodies are not supported). The response is
    ``200 OK`` with ``Content-Length: response_bytes``. Heads over 64 KiB: connection
    closed, counted in ``errors``.
    ``raw``: a request is every byte up to and including ``\\n``; the response is
    ``response_bytes`` bytes ending in ``\\n``.
    Pipelined requests are served one at a time, in order. While a response is delayed or
    being written the connection is not read (back-pressure), so a client's FIN or RST
    during ``response_delay`` is noticed when the response is written.

Who closes (``close``) -- the close mode, not the request, decides, because it is the
variable under test:
    ``server``: every response carries ``Connection: close`` (http) and the socket is
    closed as soon as it is fully written: the origin is the active closer and holds
    TIME_WAIT. The sockets are corked (``TCP_CORK``), so the FIN rides on the segment that
    carries the response's last byte: a peer that closes the moment it has the whole
    response (nginx, HAProxy) has already received the FIN and cannot win the race to
    close first, however late the origin is scheduled between ``send`` and ``close``.
    Pipelined requests after the first are dropped (and, being unread, make the kernel
    send RST instead of FIN).
    ``client``: keep-alive; the server never closes first. It closes only after reading
    EOF (so TIME_WAIT lands on the client). A request carrying ``Connection: close`` gets
    ``Connection: close`` echoed in its response (HTTP/1.1: "I will not serve more", so
    the client, e.g. HAProxy with ``option http-server-close``, closes first) but the
    server still waits for the client's FIN. A client that waits for the server to close
    (an HTTP/1.0 client without keep-alive) therefore waits forever: that is the mode.
    ``server-after``: as ``client``, but the server closes ``close_after`` seconds after a
    response if no byte of a new request arrived and the client did not close meanwhile.
    Connections that never completed a request are not timed out. ``close_after`` is
    ignored in the other modes.
    EOF from the client (either protocol, any mode): complete requests already read are
    answered, a partial one is dropped, then the server closes (``closed_by_client``).
    ``linger_zero`` turns every server-side close into an RST, the ones after EOF included.

Counters (summed over workers into ``--stats-file``; all ints)
    ``accepted requests responses bytes_in bytes_out`` and, per connection, exactly one of
    ``closed_by_server`` (server closed first), ``closed_by_client`` (EOF read first),
    ``resets`` (ECONNRESET/EPIPE), ``timeouts`` (ETIMEDOUT: keepalive or retransmissions
    gave up), ``errors`` (protocol or unexpected socket errors), ``closed_at_exit``
    (still open at SIGTERM). So ``accepted`` equals the sum of those six. Also
    ``accept_errors`` (EMFILE and the like; not connections) and ``workers``.

Access log (``--access-log PATH``)
    Worker ``n`` writes its own file ``PATH.<n>`` (no locking, no interleaving); the parent
    creates them empty at start-up (removing any ``PATH.<n>`` of an earlier run), so a bad
    path fails before READY. Each is a capped log (:mod:`chaos.record.logcap`; the workers share
    ``--access-log-cap`` bytes), rotated at line boundaries. One line per response fully written:
    ``<unix_time> <peer_ip>:<peer_port> <bytes_in> <bytes_out>`` (bytes of that request, head
    plus body, and of its response). Lines are buffered and written at least once a second
    and at exit; read every part with :func:`~chaos.lab.origin_log.read_access_log` (peers)
    or :func:`~chaos.lab.origin_log.read_access_records`.

TLS (``tls_cert`` and ``tls_key``: the scenario's ``lab.origin.tls``)
    The listener speaks TLS (TLS 1.2 or 1.3, session tickets on). The branch is taken once,
    at accept: a TLS connection gets a non-blocking :class:`ssl.SSLSocket` whose handshake the
    epoll loop drives (``SSLWantReadError``/``SSLWantWriteError`` set the interest); once it
    completes, the connection is served exactly as a plain one, through :class:`_TlsSocket`,
    so plain TCP pays nothing. A ``read_delay`` starts when the handshake ends; ``read_rate``
    is refused with TLS. Every close mode keeps its meaning, and a server-side close sends
    close_notify, then the FIN (as nginx and HAProxy do), in one segment with ``server``
    (corked once the handshake is done); a client's close_notify reads as EOF.
    ``linger_zero`` stays abortive: an RST, no close_notify. A connection that ends before
    its handshake does counts as ``closed_by_client`` (EOF: a port probe, or a client that
    refused the certificate and closed without an alert, as nginx does), ``resets``, or
    ``errors`` (a TLS alert, or a client that spoke no TLS). Counters and access log count
    plaintext bytes.

Its configuration (``--config-json``, :func:`~chaos.lab.origin_config.parse_config`) is
:mod:`chaos.lab.origin_config`; the readers of its stats and access log are
:mod:`chaos.lab.origin_log`.
"""

from __future__ import annotations

import _socket
import argparse
import contextlib
import errno
import heapq
import itertools
import json
import os
import select
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from chaos.lab.origin_config import ConfigError, OriginConfig, parse_config
from chaos.lab.origin_log import COUNTERS, worker_log, worker_logs
from chaos.record import logcap

__all__ = ["main", "serve"]

MAX_HEAD = 64 * 1024  # bigger heads (or raw lines) are treated as a protocol error
READ_SIZE = 65536
ACCEPT_BATCH = 128  # accepts per listener wake-up, so timers and I/O are not starved
LOG_FLUSH_EVERY = 1.0
LOG_FLUSH_LINES = 2048
STOP_GRACE = 10.0  # seconds the parent waits for workers after forwarding SIGTERM
PR_SET_PDEATHSIG = 1

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
# MSG_DONTWAIT keeps accepted fds in blocking mode (no per-connection fcntl) yet never blocks;
# MSG_NOSIGNAL because a worker must not die of SIGPIPE.
SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
RECV_FLAGS = socket.MSG_DONTWAIT

# Timer kinds.
_T_READ = 0  # read_delay / read_rate pause is over
_T_RESPOND = 1  # response_delay is over
_T_IDLE = 2  # server-after: close if still idle
_T_LISTEN = 3  # resume accepting after EMFILE/ENFILE


# --------------------------------------------------------------------------- worker


class _Conn:
    """Per-connection state. A timer entry is live only while the matching ``*_at`` slot
    still holds its deadline, so cancelling is just zeroing the slot."""

    __slots__ = (
        "body_left",
        "busy",
        "eof",
        "fd",
        "idle_at",
        "inbuf",
        "mask",
        "open",
        "out",
        "out_len",
        "peer",
        "read_at",
        "req_bytes",
        "req_close",
        "resp_at",
        "sock",
    )

    def __init__(self, sock: _socket.socket, fd: int, peer: Any) -> None:
        self.sock = sock
        self.fd = fd
        self.peer = peer
        self.inbuf = b""
        self.out: memoryview | None = None  # unsent rest of the current response
        self.out_len = 0
        self.mask = -1  # epoll interest; -1: not registered yet
        self.busy = False  # a request is being answered (delayed or being written)
        self.eof = False
        self.open = True
        self.body_left = 0  # http: body bytes of the current request still to discard
        self.req_bytes = 0
        self.req_close = False  # http: the request said Connection: close
        self.read_at = 0.0
        self.resp_at = 0.0
        self.idle_at = 0.0


class _BadRequest(Exception):
    pass


class _TlsSocket:
    """What the loop calls on a connection's socket (recv, send, getsockopt, close), over a
    non-blocking SSLSocket whose handshake is done. OpenSSL waiting for the other direction
    (rare once the handshake is done) reads as "not now", as EAGAIN does for plain TCP."""

    __slots__ = ("notify", "tls")

    def __init__(self, tls: ssl.SSLSocket, notify: bool) -> None:
        self.tls = tls
        self.notify = notify  # send close_notify before the FIN (not with linger_zero)

    def recv(self, n: int, flags: int = 0) -> bytes:
        try:
            return self.tls.recv(n)  # b"" on close_notify and on a bare FIN
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None

    def send(self, data: bytes | memoryview, flags: int = 0) -> int:
        try:
            return self.tls.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None

    def getsockopt(self, level: int, option: int) -> int:
        return self.tls.getsockopt(level, option)

    def close(self) -> None:
        if self.notify:
            # SSL_shutdown sends close_notify; it does not wait for the peer's (non-blocking)
            with contextlib.suppress(OSError, ValueError):
                self.tls.unwrap()
        self.tls.close()


def _http_response(n: int, close: bool) -> bytes:
    conn = b"close" if close else b"keep-alive"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: %s\r\n\r\n"
    )
    return head % (n, conn) + _body(n)


def _body(n: int) -> bytes:
    return b"x" * (n - 1) + b"\n" if n > 0 else b""


class _Worker:
    def __init__(
        self,
        cfg: OriginConfig,
        index: int,
        lsock: socket.socket,
        stats_fd: int,
        log: logcap.CappedLog | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.index = index
        self.lsock = lsock
        self.stats_fd = stats_fd
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.timers: list[tuple[float, int, int, _Conn | None]] = []
        self.seq = itertools.count()
        self.stopping = False
        self.now = time.monotonic()
        self.tls = tls  # None: plain TCP
        self.handshakes: dict[int, _Conn] = {}  # TLS connections still in their handshake
        self.accepted = self.requests = self.responses = self.bytes_in = self.bytes_out = 0
        self.closed_by_server = self.closed_by_client = self.closed_at_exit = 0
        self.resets = self.timeouts = self.errors = self.accept_errors = 0

        self.http = cfg.protocol == "http"
        self.server_close = cfg.close == "server"
        self.close_after = cfg.close_after if cfg.close == "server-after" else -1.0
        self.response_delay = cfg.response_delay
        self.read_delay = cfg.read_delay
        self.read_rate = cfg.read_rate
        # A slow reader takes ~20 small bites per second; a normal one reads all it can.
        self.read_size = max(1, min(4096, cfg.read_rate // 20)) if cfg.read_rate else READ_SIZE
        if self.http:
            self.resp_close = _http_response(cfg.response_bytes, True)
            self.resp_keep = (
                self.resp_close if self.server_close else _http_response(cfg.response_bytes, False)
            )
        else:
            self.resp_close = self.resp_keep = _body(cfg.response_bytes)

        self.log = log  # None: no access log
        self.log_lines: list[str] = []
        self.log_flush_at = 0.0

        # Signals only set a flag; the wakeup fd makes epoll return at once.
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_w = wake_w
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

        self.lfd = lsock.fileno()
        self.family = int(lsock.family)  # the property builds an enum on every access
        self.listening = True
        self.ep.register(self.lfd, EPOLLIN)
        self.ep.register(self.wake_r, EPOLLIN)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    # ---- loop

    def run(self) -> None:
        poll = self.ep.poll
        conns = self.conns
        timers = self.timers
        lfd = self.lfd
        wake_r = self.wake_r
        monotonic = time.monotonic
        on_read = self._on_read
        on_write = self._on_write
        while not self.stopping:
            timeout = -1.0
            if timers:
                timeout = max(0.0, timers[0][0] - self.now)
            if self.log_lines:
                t = max(0.0, self.log_flush_at - self.now)
                timeout = t if timeout < 0 else min(timeout, t)
            events = poll(timeout)
            self.now = monotonic()
            for fd, ev in events:
                c = conns.get(fd)
                if c is not None:
                    if ev & EPOLLOUT and c.out is not None:
                        on_write(c)
                    if c.open and ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                        if c.mask & EPOLLIN:
                            on_read(c)
                        elif ev & (EPOLLERR | EPOLLHUP):
                            self._on_error_event(c)
                elif fd == lfd:
                    self._accept()
                elif fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                elif (h := self.handshakes.get(fd)) is not None:
                    self._handshake(h)
            if timers and timers[0][0] <= self.now:
                self._run_timers()
            if self.log_lines and self.now >= self.log_flush_at:
                self._flush_log()
        self._shutdown()

    def _run_timers(self) -> None:
        timers = self.timers
        now = self.now
        pop = heapq.heappop
        while timers and timers[0][0] <= now:
            at, _, kind, c = pop(timers)
            if c is None:
                if kind == _T_LISTEN and not self.stopping:
                    self.ep.register(self.lfd, EPOLLIN)
                    self.listening = True
                continue
            if not c.open:
                continue
            if kind == _T_READ:
                if c.read_at == at:
                    c.read_at = 0.0
                    self._sync(c)
            elif kind == _T_RESPOND:
                if c.resp_at == at:
                    c.resp_at = 0.0
                    if self._respond(c):
                        self._after_response(c)
            elif kind == _T_IDLE and c.idle_at == at:
                c.idle_at = 0.0
                self.closed_by_server += 1
                self._close(c)

    def _timer(self, at: float, kind: int, c: _Conn | None) -> None:
        heapq.heappush(self.timers, (at, next(self.seq), kind, c))

    # ---- accept

    def _accept(self) -> None:
        accept = self.lsock._accept  # type: ignore[attr-defined]  # raw fd: no socket.py wrapper
        mk = _socket.socket  # the C type: socket.py's wrapper adds nothing we use
        fam = self.family
        register = self.ep.register
        conns = self.conns
        read_delay = self.read_delay
        on_read = self._on_read
        tls = self.tls
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                self.accept_errors += 1
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Level-triggered listener would spin: pause accepting briefly.
                    self.ep.unregister(self.lfd)
                    self.listening = False
                    self._timer(self.now + 0.1, _T_LISTEN, None)
                return
            if tls is not None:  # the one branch TLS costs plain TCP
                self._accept_tls(fd, peer)
                continue
            c = _Conn(mk(fam, socket.SOCK_STREAM, 0, fd), fd, peer)
            conns[fd] = c
            self.accepted += 1
            if read_delay:
                c.read_at = self.now + read_delay
                self._timer(c.read_at, _T_READ, c)
                c.mask = 0
                register(fd, 0)  # still reports ERR/HUP
                continue
            # The request has often arrived already: reading now saves an epoll_ctl and a
            # wake-up per connection (close=server usually finishes right here).
            on_read(c)
            if c.open and c.mask < 0:
                c.mask = EPOLLIN
                register(fd, EPOLLIN)

    def _accept_tls(self, fd: int, peer: Any) -> None:
        assert self.tls is not None
        sock = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        sock.setblocking(False)
        tls = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        c = _Conn(tls, fd, peer)  # type: ignore[arg-type]  # sock: the SSLSocket until done
        self.accepted += 1
        self.handshakes[fd] = c
        self._handshake(c)

    def _handshake(self, c: _Conn) -> None:
        """One step of a TLS handshake; once done, the connection is served like a plain one."""
        tls: ssl.SSLSocket = c.sock  # type: ignore[assignment]
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._want(c, EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self._want(c, EPOLLOUT)
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self._end_handshake(c, tls)
            self.closed_by_client += 1  # gone before a handshake: a probe, or a client giving up
            return
        except OSError as e:
            self._end_handshake(c, tls)
            self._count_failure(e.errno)
            return
        del self.handshakes[c.fd]
        if self.server_close:
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # as _listeners does for TCP
        c.sock = _TlsSocket(tls, not self.cfg.linger_zero)  # type: ignore[assignment]
        self.conns[c.fd] = c
        if self.read_delay:
            c.read_at = self.now + self.read_delay
            self._timer(c.read_at, _T_READ, c)
        else:
            self._on_read(c)  # the request may have come with the handshake's last flight
        if c.open:
            self._sync(c)

    def _want(self, c: _Conn, mask: int) -> None:
        if c.mask < 0:
            self.ep.register(c.fd, mask)
        elif c.mask != mask:
            self.ep.modify(c.fd, mask)
        c.mask = mask

    def _end_handshake(self, c: _Conn, tls: ssl.SSLSocket) -> None:
        c.open = False
        del self.handshakes[c.fd]
        tls.close()  # no session to close_notify

    # ---- I/O

    def _sync(self, c: _Conn) -> None:
        """Make the epoll interest match the state: write while a response is pending,
        read only when idle and not paused (back-pressure and read_delay/read_rate)."""
        if c.out is not None:
            m = EPOLLOUT
        elif not c.busy and not c.eof and not c.read_at:
            m = EPOLLIN
        else:
            m = 0
        if m != c.mask:
            if c.mask < 0:
                self.ep.register(c.fd, m)
            else:
                self.ep.modify(c.fd, m)
            c.mask = m

    def _on_read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(self.read_size, RECV_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(c, e.errno)
            return
        if not data:
            c.eof = True
            self._pump(c, False)
            return
        self.bytes_in += len(data)
        c.idle_at = 0.0  # bytes of a new request arrived: not idle any more
        c.inbuf = c.inbuf + data if c.inbuf else data
        if self.read_rate:
            c.read_at = self.now + len(data) / self.read_rate
            self._timer(c.read_at, _T_READ, c)
        self._pump(c, False)

    def _on_write(self, c: _Conn) -> None:
        out = c.out
        assert out is not None
        try:
            n = c.sock.send(out, SEND_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(c, e.errno)
            return
        if n < len(out):
            c.out = out[n:]
            return
        c.out = None
        self._responded(c, c.out_len)
        self._after_response(c)

    def _on_error_event(self, c: _Conn) -> None:
        """ERR/HUP while not reading (paused or delaying a response)."""
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(c, err)
        else:
            # HUP without an error: the peer is gone both ways; nothing more can be served.
            self.closed_by_client += 1
            self._close(c)

    # ---- request/response

    def _parse(self, c: _Conn) -> bool:
        """Consume one complete request from c.inbuf; False if more bytes are needed."""
        buf = c.inbuf
        if self.http:
            if not c.body_left:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise _BadRequest
                    return False
                head = buf[:end].lower()
                buf = buf[end + 4 :]
                cl = 0
                i = head.find(b"\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r", i + 16)
                    try:
                        cl = int(head[i + 16 : j if j >= 0 else len(head)])
                    except ValueError:
                        raise _BadRequest from None
                    if cl < 0:
                        raise _BadRequest
                i = head.find(b"\nconnection:")
                if i >= 0:
                    j = head.find(b"\r", i)
                    c.req_close = b"close" in head[i : j if j >= 0 else len(head)]
                else:
                    c.req_close = False
                c.req_bytes = end + 4 + cl
                c.body_left = cl
            if c.body_left:
                n = len(buf)
                if n < c.body_left:
                    c.body_left -= n
                    c.inbuf = b""
                    return False
                buf = buf[c.body_left :]
                c.body_left = 0
            c.inbuf = buf
            return True
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise _BadRequest
            return False
        c.req_bytes = end + 1
        c.inbuf = buf[end + 1 :]
        return True

    def _pump(self, c: _Conn, responded: bool) -> None:
        """Serve the complete requests buffered in c (one at a time) until one has to wait,
        then close on EOF, arm the server-after idle timer, or go back to reading."""
        try:
            while c.inbuf:
                if not self._parse(c):
                    break
                self.requests += 1
                if self.response_delay:
                    c.busy = True
                    c.resp_at = self.now + self.response_delay
                    self._timer(c.resp_at, _T_RESPOND, c)
                    self._sync(c)
                    return
                if not self._respond(c):
                    return  # write pending (EPOLLOUT armed) or connection gone
                if self.server_close:
                    self.closed_by_server += 1
                    self._close(c)
                    return
                responded = True
        except _BadRequest:
            self.errors += 1
            self._close(c)
            return
        if c.eof:
            self.closed_by_client += 1
            self._close(c)
            return
        if responded and self.close_after >= 0 and not c.inbuf and not c.body_left:
            c.idle_at = self.now + self.close_after
            self._timer(c.idle_at, _T_IDLE, c)
        self._sync(c)

    def _respond(self, c: _Conn) -> bool:
        """Write the response; True when it went out whole (counted and logged)."""
        resp = self.resp_close if c.req_close else self.resp_keep
        c.busy = True
        try:
            n = c.sock.send(resp, SEND_FLAGS)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._fail(c, e.errno)
            return False
        if n < len(resp):
            c.out = memoryview(resp)[n:]
            c.out_len = len(resp)
            self._sync(c)
            return False
        self._responded(c, n)
        return True

    def _responded(self, c: _Conn, n: int) -> None:
        c.busy = False
        self.responses += 1
        self.bytes_out += n
        if self.log is not None:
            peer = c.peer
            self.log_lines.append(f"{time.time():.6f} {peer[0]}:{peer[1]} {c.req_bytes} {n}\n")
            if len(self.log_lines) == 1:
                self.log_flush_at = self.now + LOG_FLUSH_EVERY
            elif len(self.log_lines) >= LOG_FLUSH_LINES:
                self._flush_log()

    def _after_response(self, c: _Conn) -> None:
        if self.server_close:
            self.closed_by_server += 1
            self._close(c)
        else:
            self._pump(c, True)

    # ---- teardown

    def _fail(self, c: _Conn, err: int | None) -> None:
        self._count_failure(err)
        self._close(c)

    def _count_failure(self, err: int | None) -> None:
        if err in (errno.ECONNRESET, errno.EPIPE):
            self.resets += 1
        elif err == errno.ETIMEDOUT:
            self.timeouts += 1
        else:
            self.errors += 1  # an SSLError's errno is OpenSSL's code, never one of the above

    def _close(self, c: _Conn) -> None:
        # close() also removes the fd from epoll (it is never dup'ed). SO_LINGER {1,0},
        # inherited from the listener, makes this an RST when linger_zero is set.
        c.open = False
        c.out = None
        del self.conns[c.fd]
        c.sock.close()

    def _flush_log(self) -> None:
        data = "".join(self.log_lines).encode("ascii", "replace")
        self.log_lines.clear()
        self.log_flush_at = self.now + LOG_FLUSH_EVERY
        assert self.log is not None
        try:
            self.log.write(data)
        except OSError as e:
            print(f"origin[{self.index}]: access log: {e}", file=sys.stderr)

    def _shutdown(self) -> None:
        if self.listening:
            self.ep.unregister(self.lfd)
        self.lsock.close()
        for c in list(self.conns.values()):
            self.closed_at_exit += 1
            self._close(c)
        for c in list(self.handshakes.values()):
            self.closed_at_exit += 1
            self._end_handshake(c, c.sock)  # type: ignore[arg-type]
        if self.log is not None:
            self._flush_log()
            self.log.close()
        stats = {name: getattr(self, name) for name in COUNTERS}
        with contextlib.suppress(OSError):  # parent gone: nobody to report to
            os.write(self.stats_fd, json.dumps(stats).encode() + b"\n")
        self.ep.close()


# --------------------------------------------------------------------------- parent


def _listeners(cfg: OriginConfig, n: int) -> tuple[list[socket.socket], int]:
    """Bind n SO_REUSEPORT listeners to one port (port 0: the kernel picks it for the first)."""
    fam = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    socks: list[socket.socket] = []
    port = cfg.port
    try:
        for _ in range(n):
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cfg.rcvbuf is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.rcvbuf)
            if cfg.defer_accept:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, cfg.defer_accept)
            ka = cfg.keepalive
            if ka.enabled:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, ka.idle)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, ka.interval)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, ka.count)
            if cfg.linger_zero:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if cfg.close == "server" and not cfg.tls:
                # Inherited by accepted sockets: the last partial segment waits for close(),
                # which tacks the FIN onto it (see "Who closes"). TLS corks once its handshake
                # is done: a corked handshake flight would wait 200 ms for the cork to time out.
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            s.bind((cfg.host, port))
            port = s.getsockname()[1]
            s.listen(cfg.backlog)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks, port


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Loaded once, before the fork: a bad file fails before READY."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _set_pdeathsig(parent: int) -> None:
    import ctypes  # only here: the import costs a few ms and only workers need it

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # parent died before prctl took effect
        os._exit(1)


def _worker_main(
    cfg: OriginConfig,
    index: int,
    lsock: socket.socket,
    stats_fd: int,
    log: logcap.CappedLog | None,
    parent: int,
    tls: ssl.SSLContext | None,
) -> int:
    try:
        _set_pdeathsig(parent)
        w = _Worker(cfg, index, lsock, stats_fd, log, tls)
        # Signals were blocked across fork so none is lost or handled by the wrong code.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        w.run()
        return 0
    except Exception as e:  # a worker must report, not print a traceback
        print(f"origin[{index}]: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _sum_stats(parts: list[dict[str, int]]) -> dict[str, int]:
    total = {name: sum(int(p.get(name, 0)) for p in parts) for name in COUNTERS}
    total["workers"] = len(parts)
    return total


def _write_stats(path: str, stats: dict[str, int]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)  # readers never see a half-written file


def serve(
    cfg: OriginConfig,
    *,
    stats_file: str | None = None,
    access_log: str | None = None,
    access_log_cap: int = logcap.DEFAULT_CAP,
) -> int:
    """Bind, fork the workers, print READY, wait for SIGTERM/SIGINT, reap, write stats.
    Returns the exit code. Call from a single-threaded process only (it forks)."""
    n = cfg.worker_count()
    tls = None
    if cfg.tls_cert is not None:
        try:
            tls = _tls_context(cfg.tls_cert, str(cfg.tls_key))
        except (OSError, ssl.SSLError) as e:
            print(f"origin: cannot load tls_cert/tls_key: {e.strerror or e}", file=sys.stderr)
            return 1
    try:
        socks, port = _listeners(cfg, n)
    except OSError as e:
        print(f"origin: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    logs: list[logcap.CappedLog] = []
    if access_log:
        # Opened here, not in the workers, so a bad path fails before READY.
        try:
            for stale in worker_logs(access_log):
                logcap.remove_parts(stale)  # an earlier run's would be read back as ours
            for i in range(n):  # the cap is shared by the workers
                logs.append(logcap.CappedLog(worker_log(access_log, i), access_log_cap // n))
        except OSError as e:
            print(f"origin: access log {access_log}: {e.strerror or e}", file=sys.stderr)
            for log in logs:
                log.close()
            for s in socks:
                s.close()
            return 1

    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    parent = os.getpid()
    pids: dict[int, int] = {}  # stats pipe read fd -> pid
    sys.stdout.flush()
    sys.stderr.flush()
    for i, lsock in enumerate(socks):
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(wake_r)
            os.close(wake_w)
            for fd in pids:
                os.close(fd)
            for other in socks:
                if other is not lsock:
                    other.close()
            for j, log in enumerate(logs):
                if j != i:
                    log.close()
            code = _worker_main(cfg, i, lsock, w, logs[i] if logs else None, parent, tls)
            sys.stderr.flush()
            os._exit(code)
        os.close(w)
        pids[r] = pid
    for s in socks:
        s.close()  # each listener (and log file) now lives only in its worker
    for log in logs:
        log.close()

    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    with contextlib.suppress(OSError):  # nobody reads stdout; keep serving
        print(f"READY {port}", flush=True)

    bufs: dict[int, bytes] = dict.fromkeys(pids, b"")
    live = set(pids)
    failed = False

    def drain(fd: int) -> None:
        data = os.read(fd, 65536)
        if data:
            bufs[fd] += data
        else:
            live.discard(fd)

    while not stop and live == set(pids):
        ready, _, _ = select.select([wake_r, *live], [], [])
        for fd in ready:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            else:
                drain(fd)
    if not stop:
        failed = True
        print("origin: a worker exited unexpectedly; stopping", file=sys.stderr)

    for fd in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[fd], signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while live:
        left = deadline - time.monotonic()
        if left <= 0:
            for fd in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[fd], signal.SIGKILL)
            failed = True
            break
        ready, _, _ = select.select(list(live), [], [], left)
        for fd in ready:
            drain(fd)
    parts: list[dict[str, int]] = []
    for fd, pid in pids.items():
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failed = True
        os.close(fd)
        try:
            parts.append(json.loads(bufs[fd].decode() or "{}"))
        except ValueError:
            failed = True
    if stats_file:
        try:
            _write_stats(stats_file, _sum_stats(parts))
        except OSError as e:
            print(
                f"origin: cannot write stats file {stats_file}: {e.strerror or e}", file=sys.stderr
            )
            failed = True
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m chaos.lab.origin", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config-json", default="{}", help="origin config as a JSON object")
    ap.add_argument("--stats-file", help="write the summed counters here (JSON) at exit")
    ap.add_argument("--access-log", help="per-request log; workers write PATH.<n>")
    ap.add_argument(
        "--access-log-cap",
        type=int,
        default=logcap.DEFAULT_CAP,
        help="bytes the access log may use on disk, every worker's parts together",
    )
    args = ap.parse_args(argv)
    try:
        try:
            raw = json.loads(args.config_json)
        except ValueError as e:
            raise ConfigError(f"--config-json is not valid JSON: {e}") from None
        cfg = parse_config(raw)
    except ConfigError as e:
        print(f"origin: config error: {e}", file=sys.stderr)
        return 2
    return serve(
        cfg,
        stats_file=args.stats_file,
        access_log=args.access_log,
        access_log_cap=args.access_log_cap,
    )


if __name__ == "__main__":
    sys.exit(main())
