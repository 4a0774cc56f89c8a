"""TLS for RawTcpUser (``--tls``): the handshake, reads and writes, and the TLS endings, on the
user's own non-blocking socket.

Why ``SSLContext._wrap_socket`` (the C-level TLS socket that ``ssl.SSLSocket`` wraps) on the
non-blocking fd, not ``ssl.SSLSocket`` nor an ``SSLObject`` with MemoryBIOs: OpenSSL reads and
writes the fd itself, so a connection costs no Python copy between BIOs and the socket, and no
gevent ``SSLSocket`` (which arms a Timeout per blocking call, like gevent's plain sockets: see
raw_tcp._Watchdog). Each call either completes or raises SSLWantRead/WriteError, on which the
greenlet waits on the hub (gevent's wait_read/wait_write) and calls again: the same design as
the plain path, where only EAGAIN waits.

What each ending sends (RawTcpUser's ``--teardown``, with ``--tls``):

* ``client-close``, ``idle-before-send``, ``slow-reader``: close_notify, then the peer's
  close_notify and its FIN are awaited, then close() sends the client's FIN (``unwrap()``
  then close; waiting for the FIN too makes the ending deterministic: the proxy, which
  answers close_notify with its own and closes, is the first to close and holds the
  TIME_WAIT). With ``--tls-no-close-notify``: close() at once, a FIN without close_notify
  (a truncation to the server's TLS layer);
* ``abort``: SO_LINGER {1, 0} then close(): an RST, never a close_notify;
* ``wait-server-fin``, ``hold-after-fin``: read to the server's close_notify and then to its
  FIN (the TCP EOF under the TLS layer), then close (or hold): the client sends no
  close_notify, as browsers do not;
* ``half-close`` is refused with TLS (the scenario model says why).

Session resumption (``--tls-resumption``): each user offers the session (TLS 1.3 ticket) of
its previous connection.
"""

from __future__ import annotations

import _socket
import contextlib
import ssl
from typing import Any

from _common import TcpFailure
from gevent.socket import wait_read, wait_write

WantRead = ssl.SSLWantReadError
WantWrite = ssl.SSLWantWriteError
_failures: dict[str, TcpFailure] = {}


class TlsSocket(_socket.socket):
    """The C socket type plus a weak-reference slot, which OpenSSL's socket object needs (it
    refers to its socket weakly); plain TCP keeps the bare type."""

    __slots__ = ("__weakref__",)


def tls_failure(exc: ssl.SSLError) -> TcpFailure:
    """The shared failure for a TLS error, named ``TLS_<OpenSSL reason>`` (e.g.
    ``TLS_CERTIFICATE_VERIFY_FAILED``, ``TLS_WRONG_VERSION_NUMBER``)."""
    name = "TLS_" + str(exc.reason or type(exc).__name__)
    failure = _failures.get(name)
    if failure is None:
        failure = _failures[name] = TcpFailure(name)
    return failure


class TlsStream:
    """One connection's TLS layer over its socket: ``send``/``recv`` as a socket's (they
    wait on the hub themselves and never raise BlockingIOError), plus the TLS ending."""

    __slots__ = ("fd", "sock", "tls")

    def __init__(self, sock: Any, tls: Any) -> None:
        self.sock = sock  # the C TLS object holds only a weak reference to it
        self.tls = tls
        self.fd = sock.fileno()

    def _call(self, method: Any, *args: Any) -> Any:
        while True:
            try:
                return method(*args)
            except WantRead:
                wait_read(self.fd)
            except WantWrite:
                wait_write(self.fd)
            except ssl.SSLEOFError:
                raise
            except ssl.SSLError as exc:
                raise tls_failure(exc) from None

    def handshake(self) -> None:
        try:
            self._call(self.tls.do_handshake)
        except ssl.SSLEOFError as exc:  # the peer closed during the handshake
            raise tls_failure(exc) from None

    def send(self, data: bytes) -> int:
        try:
            return self._call(self.tls.write, data)
        except ssl.SSLEOFError as exc:
            raise tls_failure(exc) from None

    def recv(self, size: int) -> bytes:
        """b"" at the end: the peer's close_notify, or its FIN without one."""
        try:
            return self._call(self.tls.read, size)
        except ssl.SSLEOFError:
            return b""

    @property
    def session(self) -> Any:
        return self.tls.session

    def close_notify(self) -> None:
        """Send close_notify and wait for the peer's (``unwrap()``); the peer's FIN or RST
        instead of its close_notify ends the wait too: the response was complete."""
        with contextlib.suppress(TcpFailure, ssl.SSLError, ConnectionError):
            self._call(self.tls.shutdown)


class TlsClient:
    """The process's TLS settings: one context (the run's CA), the name the certificate
    must carry, and the choices of ending and resumption."""

    def __init__(self, ca: str, server_name: str, resumption: bool, close_notify: bool) -> None:
        self.context = ssl.create_default_context(cafile=ca or None)
        self.server_name = server_name  # "" : the host connected to
        self.resumption = resumption
        self.close_notify = close_notify

    def connect(self, sock: Any, server_name: str, session: Any) -> TlsStream:
        """The handshake on connected ``sock`` with ``server_name``'s certificate, offering
        ``session`` (None: a full handshake)."""
        tls = self.context._wrap_socket(sock, False, server_name, session=session)
        stream = TlsStream(sock, tls)
        stream.handshake()
        return stream
