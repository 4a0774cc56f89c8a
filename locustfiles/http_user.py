"""HttpLoadUser: an HTTP/1.1 user on Locust's FastHttpUser (geventhttpclient), for comparison
with RawTcpUser::

    locust -f locustfiles/http_user.py --host http://198.18.2.2:8080 [--http-keepalive]

Default: every request carries ``Connection: close``, so each request is a new connection and
the server closes first (TIME_WAIT on the server); requests are named ``connection`` so that
``--rate-csv`` and chaos.load count them like RawTcpUser's connections.

``--http-keepalive``: no ``Connection: close``; each user keeps its connection between
requests. Requests are then named ``request`` (use ``--rate-entry request`` for the rate CSV).

One class with an option rather than two classes: Locust runs every class of a locustfile
unless told otherwise, so a second class would silently mix both behaviours.

Options: ``--http-keepalive``, ``--http-path`` and the options of ``_common.py`` that both users
honour (``--rate``, ``--rate-mode``, ``--rate-steps``, ``--step-seconds``,
``--source-addresses``, ``--connect-timeout``; see ``chaos/load/contract.py``). Stats come from
FastHttpUser's own request events (request_type ``GET``), one per request. The load series
(``_series.py``) gets each request's start, end, failure class and ``total`` time in
microseconds; geventhttpclient does not expose connect or first-byte times, so those phases
are absent for this user.
"""

from __future__ import annotations

import errno
import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
from _common import Pacer, opt
from _contract import contract, register_options
from _series import RECORDER
from geventhttpclient import connectionpool
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

CLOSE_HEADERS = {"Connection": "close"}
KEEPALIVE_HEADERS: dict[str, str] = {}
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    register_options(parser, contract.HTTP_OPTIONS)


class _Sources:
    """Round-robin over --source-addresses for every socket geventhttpclient opens."""

    cycle: Iterator[str] | None = None

    @classmethod
    def configure(cls, environment: Environment) -> None:
        text = str(opt(environment, "source_addresses") or "")
        sources = [a.strip() for a in text.split(",") if a.strip()]
        cls.cycle = None
        if sources:
            start = max(getattr(environment.runner, "worker_index", 0), 0) % len(sources)
            cls.cycle = itertools.cycle(sources[start:] + sources[:start])


_plain_tcp_socket = connectionpool.ConnectionPool._create_tcp_socket


def _bound_tcp_socket(self: Any, family: int, socktype: int, protocol: int) -> Any:
    # geventhttpclient has no source-address option: bind before its connect(), as the raw
    # user does (IP_BIND_ADDRESS_NO_PORT: the kernel picks the port per 4-tuple at connect).
    sock = _plain_tcp_socket(self, family, socktype, protocol)
    if _Sources.cycle is not None:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((next(_Sources.cycle), 0))
    return sock


connectionpool.ConnectionPool._create_tcp_socket = _bound_tcp_socket  # type: ignore[method-assign]


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    _Sources.configure(environment)


def failure_class(exception: BaseException) -> str:
    """The errno name of an OSError (``ECONNREFUSED``), else the exception's class name."""
    code = getattr(exception, "errno", None)
    if isinstance(code, int):
        return errno.errorcode.get(code, f"ERRNO{code}")
    return type(exception).__name__


class _Failure:
    """A failure as the series wants it: ``str`` is the class."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


class HttpLoadUser(FastHttpUser):
    """GET --http-path, one connection per request unless --http-keepalive."""

    def __init__(self, environment: Environment) -> None:
        # Read by FastHttpUser.__init__ when it builds the session.
        self.connection_timeout = float(opt(environment, "connect_timeout"))
        super().__init__(environment)
        self._pacer = Pacer(environment)

    def wait_time(self) -> float:  # type: ignore[override]
        return self._pacer.delay()

    def on_start(self) -> None:
        self._path = str(opt(self.environment, "http_path") or "/")
        keepalive = bool(opt(self.environment, "http_keepalive"))
        self._headers = KEEPALIVE_HEADERS if keepalive else CLOSE_HEADERS
        self._name = "request" if keepalive else contract.CONNECTION_ENTRY
        delay = self._pacer.first_delay()
        if delay > 0:
            gevent.sleep(delay)

    @task
    def get(self) -> None:
        RECORDER.starts.append(time.perf_counter())
        self.client.get(self._path, headers=self._headers, name=self._name)


@events.request.add_listener
def _on_request(response_time: float, exception: BaseException | None, **_: Any) -> None:
    # Fired by FastHttpSession as the request ends: its end is now, its start response_time
    # ago (measured by Locust with perf_counter, in ms).
    t4 = time.perf_counter()
    failure = _Failure(failure_class(exception)) if exception is not None else None
    RECORDER.ends.append((t4 - response_time / 1000.0, 0.0, 0.0, 0.0, t4, failure))
