"""RawTcpUser: one short TCP connection per task, with a chosen way of ending it.

Run it like any locustfile::

    locust -f locustfiles/raw_tcp.py --host tcp://198.18.2.2:8080 --headless -u 50 -r 50 \\
        --teardown client-close --rate 500

Host: ``tcp://HOST:PORT`` or ``HOST:PORT`` (``[v6]:PORT`` works too).

Wire protocols (``--protocol``), spoken by ``chaos/lab/origin.py``:
  ``raw``   request = ``--request`` plus ``\\n``; response = bytes up to and including a final
            ``\\n`` (the server may then close, depending on its configuration);
  ``http``  ``GET --http-path HTTP/1.1`` with a ``Host`` header; the response has a
            Content-Length (without one, the body ends at EOF). ``Connection: close`` is sent
            only by the modes that wait for the server's FIN.

Teardown modes (``--teardown``):
  ``client-close``      close right after the full response (TIME_WAIT on the client)
  ``wait-server-fin``   read to EOF (the server's FIN), then close
  ``half-close``        shutdown(SHUT_WR) after sending, read to EOF, close
  ``abort``             SO_LINGER {1, 0} then close: RST, no TIME_WAIT
  ``hold-after-fin``    after the server's FIN keep the socket ``--hold-seconds`` (CLOSE_WAIT on
                        the client). Held sockets are closed by a per-user reaper greenlet so the
                        user goes on connecting; at most ``--max-held`` per user (beyond that the
                        socket is closed at once and the connection fails as ``HoldOverflow``)
  ``idle-before-send``  connect, idle ``--idle-ms`` (1000 if 0), send, read, close (meets
                        TCP_DEFER_ACCEPT)
  ``slow-reader``       SO_RCVBUF ``--rcvbuf`` (4096 if 0) before connect, read at
                        ``--read-rate`` B/s (1024 if 0): the client advertises a zero window
``--idle-ms``, ``--rcvbuf`` and ``--read-rate`` also apply to every other mode when > 0.
TLS (``--tls``, ``--tls-ca``, ``--tls-server-name``, ``--tls-resumption``,
``--tls-no-close-notify``): the handshake follows the connect (and the idle), timed as the
phase ``tls``; what each mode sends at the end with TLS, and why OpenSSL works on the fd, is in
``_tls.py``. Without ``--tls`` nothing of it runs.
Keepalive (any mode): ``--keepalive`` with ``--keepidle/--keepintvl/--keepcnt`` seconds/probes.

Stats: exactly one Locust request event per connection attempt (request_type ``TCP``, name
``connection``): its total time and bytes received, and for a failure its class (below). So
Locust's request count, Aggregated RPS and failures are connections. The phases (``connect``:
socket to established; ``first_byte``: request sent to first response byte; ``close``: full
response to close() done, including the wait for the server's FIN in the modes that wait;
``total``: connect start to close done) are measured in microseconds and travel with the
per-second counts through the load series (``_series.py``, ``--series-file``), never as extra
request events: each event costs ~3 us of CPU.

Failure classes (Locust's failure table groups by them): the errno name of an OSError
(ECONNREFUSED, ECONNRESET, EADDRNOTAVAIL, EPIPE, ETIMEDOUT, ...), ``ConnectTimeout``
(``--connect-timeout``), ``ReadTimeout`` (no progress on a read or send for ``--read-timeout``),
``IncompleteResponse`` (EOF before the response ended), ``BadResponse`` (e.g. ``HTTP503``),
``SlowConnect`` (a connect slower than ``--slow-connect-ms``: the connection counts as failed
even when it went on to completion; port-range exhaustion shows first as connect latency),
``HoldOverflow``. Both timeouts are enforced by one per-process watchdog timer
with a resolution of min(timeout/10, 0.1 s), not by socket timeouts (see _Watchdog).

Connections cut short when Locust kills the users at the end of a run (at most one per user)
are not reported; the server will have counted them.

Source addresses: ``--source-addresses 198.18.1.10,198.18.1.11`` spreads connections round-robin
(per process, starting at an offset by worker index) using IP_BIND_ADDRESS_NO_PORT and
bind((addr, 0)), so the kernel picks the port per 4-tuple at connect time.

Rate control (``--rate``, ``--rate-mode``, ``--rate-steps``, ``--rate-csv``, ...): see _common.py.
Unpaced (neither ``--rate`` nor ``--rate-steps``), each user makes its connections back to back
inside one Locust task, still one request event per connection (see
``RawTcpUser._connections_back_to_back``).
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import itertools
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import gevent
from _common import (
    BadResponse,
    ConnectTimeout,
    IncompleteResponse,
    Pacer,
    ReadTimeout,
    SlowConnect,
    TcpFailure,
    errno_failure,
    opt,
    rate_control,
)
from _contract import contract, register_options
from _series import RECORDER
from _tls import TlsClient, TlsSocket, TlsStream
from gevent.socket import wait_read, wait_write
from locust import User, events, task
from locust.env import Environment
from locust.user.users import LOCUST_STATE_STOPPING

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# The C socket type with a non-blocking fd from socket(): see RawTcpUser.one_connection.
Sock = _socket.socket
#: what the reads and writes take: the socket, or its TLS layer (same send/recv)
Stream = Sock | TlsStream
NONBLOCK_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
LINGER_RST = struct.pack("ii", 1, 0)
REQUEST_TYPE = "TCP"
MODES = contract.TEARDOWN_MODES
CONNECTION = contract.CONNECTION_ENTRY
RECV_SIZE = 65536
_NO_CONTEXT: dict[str, Any] = {}  # shared, never mutated: avoids a dict per event
HOLD_OVERFLOW = TcpFailure("HoldOverflow")
SLOW_CONNECT = SlowConnect()
CONNECT_TIMEOUT = ConnectTimeout()
READ_TIMEOUT = ReadTimeout()
INCOMPLETE = IncompleteResponse()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    register_options(parser, contract.RAW_OPTIONS)


def parse_host(host: str) -> tuple[str, int]:
    """``tcp://h:p``, ``h:p``, ``[v6]:p`` (also ``http://h[:p]``) -> (h, p)."""
    text = host.strip()
    default_port = 80 if text.startswith("http://") else None
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        addr, _, port_text = text.rpartition(":")
        if not addr:
            addr, port_text = port_text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"host {host!r} has no port: use tcp://HOST:PORT")
        return addr, default_port
    return addr, int(port_text)


class RawConfig:
    """Options resolved once per process per test (users read attributes, nothing parses)."""

    def __init__(self, environment: Environment) -> None:
        g = lambda name: opt(environment, name)  # noqa: E731
        self.environment = environment
        self.protocol: str = g("protocol")
        self.request_line: str = g("request")
        self.http_path: str = g("http_path")
        self.mode: str = g("teardown")
        self.hold_seconds = float(g("hold_seconds"))
        self.max_held = int(g("max_held"))
        idle_ms = float(g("idle_ms"))
        if self.mode == "idle-before-send" and idle_ms <= 0:
            idle_ms = 1000.0
        self.idle = idle_ms / 1000.0
        rcvbuf = int(g("rcvbuf"))
        read_rate = float(g("read_rate"))
        if self.mode == "slow-reader":
            rcvbuf = rcvbuf or 4096
            read_rate = read_rate or 1024.0
        self.rcvbuf = rcvbuf
        self.read_rate = read_rate
        # Slow reads: ~10 reads/s, each no bigger than the receive buffer.
        self.read_chunk = RECV_SIZE
        if read_rate > 0:
            self.read_chunk = max(1, min(int(read_rate / 10) or 1, rcvbuf or RECV_SIZE))
        self.connect_timeout = float(g("connect_timeout"))
        self.read_timeout = float(g("read_timeout"))
        # Timeouts are enforced by a watchdog with this resolution (see _Watchdog).
        self.watchdog_tick = min(max(min(self.connect_timeout, self.read_timeout) / 10, 0.005), 0.1)
        self.slow_connect = float(g("slow_connect_ms")) / 1000.0  # seconds
        self.half_close = self.mode == "half-close"
        self.wait_fin = self.mode in ("wait-server-fin", "half-close", "hold-after-fin")
        self.abort = self.mode == "abort"
        self.hold = self.mode == "hold-after-fin"
        pre: list[tuple[int, int, int]] = []
        if rcvbuf > 0:
            pre.append((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf))
        if g("keepalive"):
            pre += [
                (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(g("keepidle"))),
                (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, int(g("keepintvl"))),
                (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(g("keepcnt"))),
            ]
        self.pre_opts = tuple(pre)
        self.tls: TlsClient | None = None
        self.socket_type: type[Sock] = Sock
        if g("tls"):
            self.socket_type = TlsSocket
            self.tls = TlsClient(
                str(g("tls_ca") or ""),
                str(g("tls_server_name") or ""),
                bool(g("tls_resumption")),
                not g("tls_no_close_notify"),
            )
        sources = [a.strip() for a in str(g("source_addresses") or "").split(",") if a.strip()]
        self.sources: Iterator[str] | None = None
        if sources:
            runner = environment.runner
            start = max(getattr(runner, "worker_index", 0), 0) % len(sources)
            self.sources = itertools.cycle(sources[start:] + sources[:start])

    def request_bytes(self, host: str, port: int) -> bytes:
        if self.protocol == "http":
            connection = "Connection: close\r\n" if self.wait_fin else ""
            return (
                f"GET {self.http_path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"User-Agent: chaos-raw-tcp\r\n{connection}\r\n"
            ).encode()
        line = self.request_line
        return (line if line.endswith("\n") else line + "\n").encode()


class _Config:
    current: RawConfig | None = None


def config_for(environment: Environment) -> RawConfig:
    cfg = _Config.current
    if cfg is None or cfg.environment is not environment:
        cfg = _Config.current = RawConfig(environment)
    return cfg


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    # Workers receive the master's options just before test_start: rebuild from them.
    _Config.current = RawConfig(environment)


def _drain_and_close(sock: Sock) -> None:
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more has arrived
        while sock.recv(RECV_SIZE):
            pass
    sock.close()


class _Expired(Exception):
    """Thrown into a user's greenlet by the watchdog when its deadline passed."""


class _Watchdog:
    """One hub timer per process enforcing every user's deadline.

    Why not socket timeouts: with ``settimeout`` gevent creates and arms a Timeout object for
    every blocking call (three or more per connection); that measured ~15% of a bare
    connect/GET/close loop. Here a connection only stores a float; a repeating hub timer
    (``tick`` s, so timeouts are that coarse) throws into the greenlets whose deadline passed,
    from the hub, exactly as gevent's own Timeout does.
    """

    def __init__(self) -> None:
        self.users: set[RawTcpUser] = set()
        self.timer: Any = None

    def add(self, user: RawTcpUser, tick: float) -> None:
        self.users.add(user)
        if self.timer is None:
            self.timer = gevent.get_hub().loop.timer(tick, tick, ref=False)
            self.timer.start(self._tick)

    def remove(self, user: RawTcpUser) -> None:
        self.users.discard(user)
        if not self.users and self.timer is not None:
            self.timer.stop()
            self.timer.close()
            self.timer = None

    def _tick(self) -> None:
        now = time.perf_counter()
        for user in tuple(self.users):
            deadline = user._deadline
            if deadline and now > deadline:
                user._deadline = 0.0
                glet = user._glet
                if glet is not None and not glet.dead:
                    glet.throw(_Expired)


WATCHDOG = _Watchdog()


class RawTcpUser(User):
    """One new TCP connection per task; see the module docstring for options and stats."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._pacer = Pacer(environment)
        self._held: deque[tuple[float, Sock]] = deque()
        self._reaper: gevent.Greenlet | None = None
        self._deadline = 0.0  # perf_counter() deadline of the current blocking step, 0 = none
        self._glet: Any = None
        self._waits = 0  # waits on the hub so far (see _connections_back_to_back)
        self._back_to_back = False
        self._session: Any = None  # TLS: the session of this user's last connection

    def wait_time(self) -> float:  # type: ignore[override]
        return self._pacer.delay()

    def on_start(self) -> None:
        if not self.host:
            raise ValueError("RawTcpUser needs --host tcp://HOST:PORT")
        self._cfg = cfg = config_for(self.environment)
        host, port = parse_host(self.host)
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self._family, self._addr = info[0], info[4]
        self._request = cfg.request_bytes(host, port)
        self._server_name = (cfg.tls.server_name or host) if cfg.tls is not None else ""
        self._fire = self.environment.events.request.fire
        self._glet = gevent.getcurrent()
        WATCHDOG.add(self, cfg.watchdog_tick)
        self._back_to_back = not rate_control(self.environment).paced
        delay = self._pacer.first_delay()
        if delay > 0:
            gevent.sleep(delay)

    def on_stop(self) -> None:
        WATCHDOG.remove(self)
        self._deadline = 0.0
        if self._reaper is not None:
            self._reaper.kill(block=False)
            self._reaper = None
        while self._held:
            self._held.popleft()[1].close()

    @task
    def connection(self) -> None:
        if self._back_to_back:
            self._connections_back_to_back()
        else:
            self.one_connection()

    def _connections_back_to_back(self) -> None:
        """Unpaced: connection after connection within one task, until Locust stops the user.

        Why: between tasks Locust's TaskSet picks the next task, asks ``wait_time`` and calls
        ``gevent.sleep(0)`` even for a zero wait, about 10 us of a connection's CPU. Each
        connection is still one Locust request. Stopping is unchanged: Locust kills the user
        (stop timeout 0) or sets it STOPPING, checked after every connection. A connection that
        never waited on the hub (e.g. EADDRNOTAVAIL straight from connect()) yields once, so
        the loop cannot starve Locust's own greenlets.
        """
        one_connection = self.one_connection
        while self._state != LOCUST_STATE_STOPPING:
            waits = self._waits
            one_connection()
            if self._waits == waits:
                gevent.sleep(0)

    # ------------------------------------------------------------------ one connection
    def one_connection(self) -> None:
        cfg = self._cfg
        perf = time.perf_counter
        recorder = RECORDER
        t0 = perf()
        recorder.starts.append(t0)
        t1 = t2 = tf = t3 = 0.0
        nbytes = 0
        failure: TcpFailure | None = None
        stage = 0  # 0 connecting, 1 request/response, 2 teardown
        # Why the C socket type, not gevent's: a gevent socket costs an extra ioctl (to make
        # it non-blocking), a second connect() and two getsockopt() per connect, and Python
        # wrappers around every call; about a fifth of a connection's CPU (bench/load_churn.py).
        # Here the fd is non-blocking from socket(), and the greenlet waits on the hub only
        # when the kernel says EINPROGRESS/EAGAIN (wait_read/wait_write: gevent's own, and
        # the watchdog's throw() interrupts them like any gevent wait).
        sock = cfg.socket_type(self._family, NONBLOCK_STREAM)
        self._deadline = t0 + cfg.connect_timeout
        try:
            for level, name, value in cfg.pre_opts:
                sock.setsockopt(level, name, value)
            if cfg.sources is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((next(cfg.sources), 0))
            err = sock.connect_ex(self._addr)
            if err:
                if err != errno.EINPROGRESS:
                    raise OSError(err, os.strerror(err))
                self._wait_connected(sock)
            t1 = perf()
            recorder.connects.append((t0, t1))
            stage = 1
            if cfg.idle > 0:
                self._deadline = 0.0
                self._waits += 1
                gevent.sleep(cfg.idle)
            self._deadline = perf() + cfg.read_timeout
            stream: Any = sock
            if cfg.tls is not None:
                stream = self._handshake(sock)
            self._sendall(stream, self._request)
            if cfg.half_close:
                sock.shutdown(socket.SHUT_WR)
            t2 = perf()
            if cfg.protocol == "raw":
                tf, nbytes = self._read_raw(stream)
                eof = False
            else:
                tf, nbytes, eof = self._read_http(stream)
            t3 = perf()
            stage = 2
            if cfg.wait_fin and not eof:
                nbytes += self._read_to_eof(stream)
            if stream is not sock:
                self._end_tls(stream, eof)
            self._deadline = 0.0
            if cfg.hold:
                if not self._hold(sock):
                    failure = HOLD_OVERFLOW
            else:
                if cfg.abort:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                sock.close()
        except TcpFailure as exc:
            failure = exc
        except _Expired:
            failure = CONNECT_TIMEOUT if stage == 0 else READ_TIMEOUT
        except TimeoutError:  # the kernel's own (e.g. SYN retries exhausted): errno-less
            failure = CONNECT_TIMEOUT if stage == 0 else READ_TIMEOUT
        except OSError as exc:
            failure = errno_failure(exc)
        except gevent.GreenletExit:
            # Locust killed the user mid-connection (not reported, see the module docstring):
            # read what already arrived so that close() sends a FIN, not an RST for unread data.
            _drain_and_close(sock)
            raise
        self._deadline = 0.0
        t4 = perf()
        if failure is not None:
            sock.close()
        elif t1 - t0 > cfg.slow_connect:
            # Port-range exhaustion shows first as connect latency: such a connection counts
            # as failed (SlowConnect) although it went on to completion.
            failure = SLOW_CONNECT
        # The phases travel through the series (_series.py); Locust gets one event.
        recorder.ends.append((t0, t2, tf, t3, t4, failure))
        self._fire(
            request_type=REQUEST_TYPE,
            name=CONNECTION,
            response_time=(t4 - t0) * 1000.0,
            response_length=nbytes,
            exception=failure,
            context=_NO_CONTEXT,
        )

    # ------------------------------------------------------------------ TLS (--tls)
    def _handshake(self, sock: Sock) -> TlsStream:
        """The TLS handshake, timed as the phase ``tls`` (see _tls.py)."""
        tls = self._cfg.tls
        assert tls is not None
        started = time.perf_counter()
        stream = tls.connect(sock, self._server_name, self._session)
        RECORDER.handshakes.append((started, time.perf_counter()))
        return stream

    def _end_tls(self, stream: TlsStream, eof: bool) -> None:
        """After the response: keep the session to resume, then the TLS side of the mode's
        ending (see _tls.py); the TCP side is the plain path's."""
        cfg = self._cfg
        tls = cfg.tls
        assert tls is not None
        if tls.resumption:
            self._session = stream.session
        if tls.close_notify and not (cfg.wait_fin or eof or cfg.abort):
            self._deadline = time.perf_counter() + cfg.read_timeout
            stream.close_notify()
            self._read_to_eof(stream.sock)  # the proxy's FIN behind its close_notify
        elif cfg.wait_fin or eof:
            self._read_to_eof(stream.sock)  # the server's FIN behind its close_notify

    # ------------------------------------------------------------------ socket calls
    def _wait_connected(self, sock: Sock) -> None:
        """After connect() said EINPROGRESS: return once established, raise its error.

        Back to back (unpaced, where the user's CPU is the limit): on veth and loopback the
        handshake has usually completed by the time connect() returns (the SYN-ACK is
        processed when connect() releases the socket), and getpeername() succeeds only on an
        established socket; that skips a trip through the hub (a watcher, an epoll_ctl and
        two greenlet switches, ~20 us). Paced users always wait on the hub first: at the end
        of a distributed run Locust kills users mid-connection, and a user killed before its
        request went out leaves nothing served that Locust did not count (paced runs are the
        ones compared with the origin's counts). Still connecting, or refused/reset
        (ENOTCONN): wait for writability; SO_ERROR names the failure.
        """
        if self._back_to_back:
            try:
                sock.getpeername()
                return
            except OSError:
                pass
        self._waits += 1
        wait_write(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))

    def _sendall(self, sock: Stream, data: bytes) -> None:
        # A request fits an empty send buffer: one send() is the usual case.
        while data:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                self._waits += 1
                wait_write(sock.fileno())
                continue
            data = data[sent:]

    # ------------------------------------------------------------------ reading
    def _recv(self, sock: Stream) -> bytes:
        """One read; the read timeout counts from here (no progress for --read-timeout)."""
        cfg = self._cfg
        self._deadline = time.perf_counter() + cfg.read_timeout
        while True:
            try:
                data = sock.recv(cfg.read_chunk)
                break
            except BlockingIOError:
                self._waits += 1
                wait_read(sock.fileno())
        if data and cfg.read_rate > 0:
            self._deadline = 0.0  # the pause is ours, not the peer's
            self._waits += 1
            gevent.sleep(len(data) / cfg.read_rate)
        return data

    def _read_raw(self, sock: Stream) -> tuple[float, int]:
        """Read up to a chunk ending in a newline. Returns (first-byte time, bytes)."""
        recv = self._recv
        data = recv(sock)
        if not data:
            raise INCOMPLETE
        first = time.perf_counter()
        total = len(data)
        while data[-1] != 10:  # b"\n"
            data = recv(sock)
            if not data:
                raise INCOMPLETE
            total += len(data)
        return first, total

    def _read_http(self, sock: Stream) -> tuple[float, int, bool]:
        data = self._recv(sock)
        if not data:
            raise INCOMPLETE
        first = time.perf_counter()
        buf = data
        while b"\r\n\r\n" not in buf:
            data = self._recv(sock)
            if not data:
                raise INCOMPLETE
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or head[9:10] not in b"23":
            raise BadResponse(f"HTTP{head[9:12].decode('latin-1', 'replace')}")
        total = len(buf)
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            # No length: the body ends at EOF.
            while True:
                data = self._recv(sock)
                if not data:
                    return first, total, True
                total += len(data)
        end = lower.find(b"\r\n", at + 2)
        remaining = int(lower[at + 17 : end if end > 0 else None]) - len(body)
        while remaining > 0:
            data = self._recv(sock)
            if not data:
                raise INCOMPLETE
            remaining -= len(data)
            total += len(data)
        return first, total, False

    def _read_to_eof(self, sock: Stream) -> int:
        total = 0
        while True:
            data = self._recv(sock)
            if not data:
                return total
            total += len(data)

    # ------------------------------------------------------------------ holding
    def _hold(self, sock: Sock) -> bool:
        """Keep ``sock`` for --hold-seconds; False (and closed) when the user holds the most
        it may already."""
        cfg = self._cfg
        if len(self._held) >= cfg.max_held:
            sock.close()
            return False
        self._held.append((time.monotonic() + cfg.hold_seconds, sock))
        if self._reaper is None or self._reaper.dead:
            # One reaper per user, not a greenlet per socket: deadlines are in FIFO order.
            self._reaper = gevent.spawn(self._reap)
        return True

    def _reap(self) -> None:
        held = self._held
        while held:
            delay = held[0][0] - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
                continue
            held.popleft()[1].close()
