"""The load contract, defined once: the locustfiles' options, their defaults, the teardown
modes, which user honours what, and the rate-step schedule.

Imported by the controller (:mod:`chaos.load.options`, the scenario model) and by the
locustfiles (``locustfiles/_common.py``, inside Locust's gevent-patched processes), so it is
stdlib only and imports nothing of Locust, gevent or the rest of ``chaos``.

Each :class:`Option` is registered on Locust's parser by the locustfiles (visible in the web
UI's form unless ``web_ui`` is false) and built into argv by ``user_options``; ``users`` says
which user kinds (``raw``: ``RawTcpUser``, ``http``: ``HttpLoadUser``) honour it, and the
scenario model refuses a ``load:`` field that no user of the chosen kind honours.
"""

from __future__ import annotations

from dataclasses import dataclass

USER_KINDS = ("raw", "http")
RAW, HTTP = USER_KINDS
BOTH = frozenset(USER_KINDS)
RAW_ONLY = frozenset({RAW})

TEARDOWN_MODES = (
    "client-close",
    "wait-server-fin",
    "half-close",
    "abort",
    "hold-after-fin",
    "idle-before-send",
    "slow-reader",
)
#: what HttpLoadUser does (Connection: close, the server closes, the client reads to EOF)
HTTP_TEARDOWN = "wait-server-fin"
RATE_MODES = ("per-user", "shared")
PROTOCOLS = ("raw", "http")

#: the name of the one Locust request entry per connection (both users)
CONNECTION_ENTRY = "connection"


@dataclass(frozen=True)
class Option:
    """One ``--flag`` of the locustfiles."""

    flag: str
    default: object
    help: str
    kind: type = str
    choices: tuple[str, ...] | None = None
    users: frozenset[str] = BOTH
    web_ui: bool = True  # plumbing the controller sets (files, hints) stays off the form

    @property
    def dest(self) -> str:
        """The attribute on Locust's parsed options (``--rate-mode`` -> ``rate_mode``)."""
        return self.flag.lstrip("-").replace("-", "_")

    def argparse_kwargs(self) -> dict[str, object]:
        """Keyword arguments for Locust's ``parser.add_argument``."""
        kwargs: dict[str, object] = {
            "default": self.default,
            "help": self.help,
            "include_in_web_ui": self.web_ui,
        }
        if self.kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = self.kind
        if self.choices:
            kwargs["choices"] = list(self.choices)
        return kwargs


def _options(*items: Option) -> dict[str, Option]:
    return {item.dest: item for item in items}


#: Options of both users (``locustfiles/_common.py`` registers them).
COMMON = _options(
    Option("--rate", 0.0, "target new connections/s for the whole test (0: unpaced)", float),
    Option(
        "--rate-mode",
        "per-user",
        "per-user: each user on its own schedule; shared: one token bucket per process",
        choices=RATE_MODES,
    ),
    Option("--rate-steps", "", "comma list of rates, one per --step-seconds (overrides --rate)"),
    Option("--step-seconds", 10.0, "length of one rate step, seconds", float),
    Option("--source-addresses", "", "comma list of local addresses, round-robin"),
    Option("--connect-timeout", 5.0, "seconds", float),
    Option("--http-path", "/", "HTTP request path"),
    Option(
        "--workers-hint", 0, "worker processes sharing --rate (0: automatic)", int, web_ui=False
    ),
    Option("--rate-csv", "", "master/local: per-second target and achieved rate CSV", web_ui=False),
    Option("--failures-csv", "", "master/local: failures per class and second CSV", web_ui=False),
    Option(
        "--series-file", "", "master/local: the per-second load series (JSON lines)", web_ui=False
    ),
    Option(
        "--rate-entry",
        CONNECTION_ENTRY,
        "stats entry counted as achieved rate (empty: Aggregated)",
        web_ui=False,
    ),
    Option(
        "--heartbeat-liveness",
        0,
        "master: missed 1 s heartbeats before a worker counts as gone (0: Locust's 3)",
        int,
        web_ui=False,
    ),
)

#: Options of RawTcpUser only (``locustfiles/raw_tcp.py`` registers them).
RAW_OPTIONS = _options(
    Option("--protocol", "raw", "wire protocol", choices=PROTOCOLS, users=RAW_ONLY),
    Option("--request", "GET", "raw protocol: request line (\\n appended)", users=RAW_ONLY),
    Option("--teardown", "wait-server-fin", "how to end", choices=TEARDOWN_MODES, users=RAW_ONLY),
    Option("--hold-seconds", 30.0, "hold-after-fin: hold time", float, users=RAW_ONLY),
    Option("--max-held", 10000, "held sockets per user, at most", int, users=RAW_ONLY),
    Option("--idle-ms", 0.0, "idle after connect, before send", float, users=RAW_ONLY),
    Option("--rcvbuf", 0, "SO_RCVBUF before connect (0: kernel)", int, users=RAW_ONLY),
    Option("--read-rate", 0.0, "read at most B/s (0: no limit)", float, users=RAW_ONLY),
    Option("--keepalive", False, "SO_KEEPALIVE on", bool, users=RAW_ONLY),
    Option("--keepidle", 60, "TCP_KEEPIDLE seconds", int, users=RAW_ONLY),
    Option("--keepintvl", 10, "TCP_KEEPINTVL seconds", int, users=RAW_ONLY),
    Option("--keepcnt", 5, "TCP_KEEPCNT probes", int, users=RAW_ONLY),
    Option("--read-timeout", 10.0, "seconds without progress", float, users=RAW_ONLY),
    Option(
        "--slow-connect-ms",
        200.0,
        "a connect slower than this fails the connection as SlowConnect",
        float,
        users=RAW_ONLY,
    ),
    Option("--tls", False, "speak TLS (see locustfiles/_tls.py)", bool, users=RAW_ONLY),
    Option(
        "--tls-ca",
        "",
        "TLS: trust this CA file (PEM) only (empty: the system's CAs)",
        users=RAW_ONLY,
    ),
    Option(
        "--tls-server-name",
        "",
        "TLS: the name or address the certificate must carry (empty: the host's)",
        users=RAW_ONLY,
    ),
    Option(
        "--tls-resumption",
        False,
        "TLS: resume the user's previous session",
        bool,
        users=RAW_ONLY,
    ),
    Option(
        "--tls-no-close-notify",
        False,
        "TLS: the client-closing modes send a FIN without close_notify",
        bool,
        users=RAW_ONLY,
    ),
)

#: Options of HttpLoadUser only (``locustfiles/http_user.py`` registers them).
HTTP_OPTIONS = _options(
    Option(
        "--http-keepalive",
        False,
        "keep connections open between requests (default: Connection: close)",
        bool,
        users=frozenset({HTTP}),
    ),
)

ALL_OPTIONS = {**COMMON, **RAW_OPTIONS, **HTTP_OPTIONS}

#: scenario ``load:`` field -> the option that carries it (fields without one are plumbing of
#: the controller: users, spawn_rate, workers)
SCENARIO_FIELDS: dict[str, str] = {
    "rate": "rate",
    "rate_mode": "rate_mode",
    "rate_steps": "rate_steps",
    "step_duration": "step_seconds",
    "connect_timeout": "connect_timeout",
    "teardown": "teardown",
    "hold": "hold_seconds",
    "idle_before_send": "idle_ms",
    "rcvbuf": "rcvbuf",
    "read_rate": "read_rate",
    "keepalive": "keepalive",
    "slow_connect": "slow_connect_ms",
    "tls": "tls",
}


def honoured_by(field: str, user: str) -> bool:
    """Whether a ``load:`` field reaches a user of kind ``user``."""
    option = SCENARIO_FIELDS.get(field)
    return option is None or user in ALL_OPTIONS[option].users


def default(dest: str) -> object:
    return ALL_OPTIONS[dest].default


# --------------------------------------------------------------------------- rate steps
def parse_rate_steps(text: str) -> list[float]:
    """``"500, 1000,2000"`` -> ``[500.0, 1000.0, 2000.0]``."""
    return [float(part) for part in text.replace(" ", "").split(",") if part]


def format_rate_steps(steps: list[float]) -> str:
    return ",".join(f"{step:g}" for step in steps)


def target_rate(elapsed: float, rate: float, steps: list[float], step_seconds: float) -> float:
    """The whole test's target rate ``elapsed`` seconds after the load started: ``rate``
    without steps; with steps, step ``i`` holds from ``i * step_seconds`` on, and the last step
    holds to the end."""
    if not steps:
        return rate
    index = min(int(max(elapsed, 0.0) / max(step_seconds, 1e-9)), len(steps) - 1)
    return steps[index]
