"""The agent's HTTP plumbing: JSON over HTTP(S), a bearer token, and limits on what a hostile
client can hold; no fault logic (that is :mod:`chaos.agent.service`, which hands this
module its :class:`Route` table).

Hostile clients. Connections beyond ``MAX_CONNECTIONS`` are refused at accept (503, no
thread); each read waits at most ``READ_TIMEOUT`` and the whole request must arrive within
``READ_DEADLINE`` of the connect; bodies need an exact ``Content-Length`` (digits, at most
64 KiB; chunked is refused) and at most ``MAX_JSON_DEPTH`` levels of JSON. Every request
carries ``Authorization: Bearer <token>``, compared in constant time. The TLS handshake
happens in the request's own thread, with a timeout, so a client that stalls it holds up
no one else.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel, ValidationError

from chaos.errors import ChaosError, FaultError

__all__ = [
    "API",
    "MAX_CONNECTIONS",
    "READ_TIMEOUT",
    "ApiError",
    "Route",
    "Server",
    "authorized",
    "parse_body",
    "parse_listen",
    "server_tls",
]

API = "/v1"
MAX_BODY = 64 * 1024
#: JSON nesting a request may have (ours need 4): deeper is a 400, never a RecursionError
MAX_JSON_DEPTH = 16
#: at most this many connections are served at once; more are refused (503) at accept
MAX_CONNECTIONS = 32
LISTEN_BACKLOG = 128
#: seconds one read may wait (an idle connection is closed after this)...
READ_TIMEOUT = 5.0
#: ...and seconds a client has from connecting to having sent its whole request
READ_DEADLINE = 10.0


class ApiError(Exception):
    """A request the agent refuses: an HTTP status and a message with a fix."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint

    @classmethod
    def of(cls, status: int, exc: ChaosError) -> ApiError:
        return cls(status, exc.message, exc.hint)


Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Route:
    """One endpoint: ``method`` on ``API + path`` (a regular expression; its ``id`` group is
    handed to ``call``), with the JSON body when ``body`` says it has one."""

    method: str
    path: str
    call: Callable[[str | None, dict[str, Any] | None], Answer]
    body: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(f"^{API}{self.path}$"))


def authorized(header: str | None, token: bytes) -> bool:
    """Whether ``header`` (Authorization) carries ``token`` as a bearer token."""
    scheme, _, given = (header or "").partition(" ")
    # compare_digest: the time taken does not reveal how much of the token matched.
    given_token = given.strip().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given_token, token)


def parse_body(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ApiError(
            400, f"invalid request: {problems}", f"see {API}/types and the README"
        ) from None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FaultError(f"--listen {text!r}: expected HOST:PORT", "e.g. --listen 198.18.3.2:7700")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = "chaos-agent/1"
    server: Server
    timeout = READ_TIMEOUT  # applied to the socket by StreamRequestHandler.setup

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        if method != "POST":
            self.server.request_read()  # no body to come
        try:
            if not authorized(self.headers.get("Authorization"), self.server.token):
                raise ApiError(
                    401,
                    "missing or wrong token",
                    "send `Authorization: Bearer <token>` with the agent's token",
                )
            status, body = self._route(method)
        except ApiError as exc:
            status, body = exc.status, {"error": exc.message, "hint": exc.hint}
        except Exception as exc:  # a bug: the log gets the traceback, the client a message
            traceback.print_exc(file=sys.stderr)
            status = 500
            body = {
                "error": f"internal error: {type(exc).__name__}: {exc}",
                "hint": "see the agent's log",
            }
        self._send(status, body)

    def _route(self, method: str) -> Answer:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        matched = [(r, match) for r in self.server.routes if (match := r.pattern.match(path))]
        if not matched:
            raise ApiError(404, f"no endpoint {path}", f"the API is under {API}/ (see README)")
        found = next(((r, match) for r, match in matched if r.method == method), None)
        if found is None:
            allowed = ", ".join(sorted({r.method for r, _ in matched}))
            raise ApiError(
                405, f"{method} is not allowed on {path}", f"use {allowed} (see the README)"
            )
        route, match = found
        return route.call(match.groupdict().get("id"), self._body() if route.body else None)

    def _body(self) -> dict[str, Any]:
        self.close_connection = True  # whatever happens, this connection ends here
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked bodies are not accepted", "send Content-Length")
        lengths = self.headers.get_all("Content-Length") or ["0"]
        text = lengths[0].strip()
        # digits only: int() would take "-1", "+5" or " 1_0" (and -1 reads until EOF)
        if len(lengths) > 1 or not text.isascii() or not text.isdigit() or len(text) > 9:
            raise ApiError(
                400, f"invalid Content-Length {lengths!r}", "send the body's length in bytes"
            )
        length = int(text)
        if length > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes", "send a smaller request")
        raw = self.rfile.read(length) if length else b"{}"
        if len(raw) != length:
            raise ApiError(400, "the body ended before its Content-Length", "send all of it")
        self.server.request_read()
        try:
            body = json.loads(raw)
        except RecursionError:
            body = None  # nested far too deep: refused below
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON: {exc}", "send a JSON object") from None
        if body is None or _depth(body) > MAX_JSON_DEPTH:
            raise ApiError(
                400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", "send a flat request"
            )
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", "send {...}")
        return body

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


#: seconds a client gets to finish the TLS handshake
HANDSHAKE_TIMEOUT = 10.0
BUSY = json.dumps(
    {"error": "the agent is serving too many connections", "hint": "retry in a second"}
).encode()


class _Connection:
    """One accepted connection: its socket (the TLS one once wrapped) and the time by which
    its request must have been read; past it, the watchdog shuts the socket down."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + READ_DEADLINE

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class Server(ThreadingHTTPServer):
    """The agent's HTTP(S) server: ``routes`` behind the bearer ``token``. A thread per
    connection, at most MAX_CONNECTIONS of them, each on a deadline that one watchdog thread
    enforces."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        token: str,
        routes: Sequence[Route],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.token = token.encode()
        self.routes = tuple(routes)
        self.tls = tls
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.local = threading.local()  # the _Connection of the thread serving it
        self.reading: set[_Connection] = set()  # connections whose request is not read yet
        self.reading_lock = threading.Lock()
        super().__init__(address, _Handler)
        threading.Thread(target=self._watchdog, name="read-deadlines", daemon=True).start()

    def _watchdog(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self.reading_lock:
                overdue = [c for c in self.reading if c.deadline <= now]
                self.reading.difference_update(overdue)
            for connection in overdue:
                connection.cut()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self.slots.release()
            raise

    def _refuse(self, request: socket.socket) -> None:
        """503 without a thread: written without waiting, then closed."""
        if self.tls is None:
            head = (
                "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BUSY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                request.send(head.encode() + BUSY, socket.MSG_DONTWAIT)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        connection = _Connection(request)
        self.local.connection = connection
        with self.reading_lock:
            self.reading.add(connection)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.request_read()
            self.slots.release()

    def request_read(self) -> None:
        """The request is read: its deadline no longer applies (applies may take time)."""
        connection = getattr(self.local, "connection", None)
        with self.reading_lock:
            self.reading.discard(connection)  # type: ignore[arg-type]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the request's thread: the handshake cannot stall the accept loop.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        assert isinstance(request, socket.socket)
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)  # detaches `request`
        except (OSError, ssl.SSLError) as exc:
            print(f"{client_address[0]} TLS handshake failed: {exc}", file=sys.stderr,
                  flush=True)  # fmt: skip
            return
        self.local.connection.sock = wrapped  # the deadline now cuts the TLS socket
        with wrapped:
            wrapped.settimeout(None)
            super().finish_request(wrapped, client_address)


def server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The agent's TLS context from ``--tls-cert``/``--tls-key``, or None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise FaultError(
            "--tls-cert and --tls-key go together",
            "give both PEM files, e.g. from `openssl req -x509 -newkey rsa:2048 -nodes "
            "-keyout key.pem -out cert.pem -subj /CN=agent -addext subjectAltName=IP:ADDRESS`",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise FaultError(
            f"TLS file not found: {exc.filename}", "check --tls-cert and --tls-key"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise FaultError(
            f"cannot load the TLS certificate {cert} with key {key}: {exc}",
            "both must be PEM, and the key must be the certificate's",
        ) from None
    return context
