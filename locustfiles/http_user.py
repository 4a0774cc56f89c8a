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

Options: ``--http-keepalive``, ``--http-path`` and the rate options of ``_common.py``
(``--rate``, ``--rate-mode``, ``--rate-steps``, ...). Stats come from FastHttpUser's own
request events (request_type ``GET``).
"""

from __future__ import annotations

from typing import Any

import gevent
from _common import Pacer, opt
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

CLOSE_HEADERS = {"Connection": "close"}
KEEPALIVE_HEADERS: dict[str, str] = {}


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("HttpLoadUser (locustfiles/http_user.py)")
    g.add_argument(
        "--http-keepalive",
        action="store_true",
        default=False,
        help="keep connections open between requests (default: Connection: close)",
    )


class HttpLoadUser(FastHttpUser):
    """GET --http-path, one connection per request unless --http-keepalive."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._pacer = Pacer(environment)

    def wait_time(self) -> float:  # type: ignore[override]
        return self._pacer.delay()

    def on_start(self) -> None:
        self._path = str(opt(self.environment, "http_path", "/") or "/")
        keepalive = bool(opt(self.environment, "http_keepalive", False))
        self._headers = KEEPALIVE_HEADERS if keepalive else CLOSE_HEADERS
        self._name = "request" if keepalive else "connection"
        delay = self._pacer.first_delay()
        if delay > 0:
            gevent.sleep(delay)

    @task
    def get(self) -> None:
        self.client.get(self._path, headers=self._headers, name=self._name)
