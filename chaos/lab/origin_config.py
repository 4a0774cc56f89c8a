"""The origin server's configuration (:mod:`chaos.lab.origin`): what ``--config-json``
takes, checked with one clear error (:class:`ConfigError`) per bad key, and the argv that
starts the server with it (:func:`command`). Stdlib only, like the server.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CLOSE_MODES", "PROTOCOLS", "ConfigError", "KeepaliveConfig", "OriginConfig",
           "command", "parse_config"]  # fmt: skip

PROTOCOLS = ("http", "raw")
CLOSE_MODES = ("server", "client", "server-after")
MAX_RESPONSE = 64 * 1024 * 1024  # responses are precomputed in memory


class ConfigError(ValueError):
    """An unknown key or a bad value in the origin config; the message names the key."""


@dataclass(frozen=True)
class KeepaliveConfig:
    enabled: bool = False
    idle: int = 7200
    interval: int = 75
    count: int = 9


@dataclass(frozen=True)
class OriginConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    protocol: str = "http"
    close: str = "server"
    close_after: float = 0.0
    response_delay: float = 0.0
    response_bytes: int = 100
    defer_accept: int = 0
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    linger_zero: bool = False
    read_delay: float = 0.0
    read_rate: int = 0
    rcvbuf: int | None = None
    workers: int | None = None
    backlog: int = 4096
    #: PEM files: with both, the listener speaks TLS (see "TLS" in chaos.lab.origin)
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def to_json(self) -> str:
        """Compact JSON accepted by ``--config-json`` (round-trips through parse_config)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        # Affinity, not cpu_count: in a cgroup/cpuset only the allowed CPUs help.
        return max(1, len(os.sched_getaffinity(0)))


def _int(key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}: expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{key}: {v} is out of range [{lo}, {hi}]")
    return v


def _seconds(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{key}: expected a number of seconds, got {v!r}")
    if not math.isfinite(v) or v < 0 or v > 86400 * 365:
        raise ConfigError(f"{key}: {v} is not a duration in [0, 1 year]")
    return float(v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _choice(key: str, v: Any, choices: Sequence[str]) -> str:
    if v not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {v!r}")
    return str(v)


def _check_keys(where: str, data: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (known: {', '.join(known)})"
        )


def _host(v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"host: expected an IP address string, got {v!r}")
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, v)
            return v
        except OSError:
            pass
    raise ConfigError(f"host: {v!r} is not an IPv4 or IPv6 address")


def _pem(key: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: expected the path of a PEM file, got {v!r}")
    return v


def parse_config(data: Mapping[str, Any] | None) -> OriginConfig:
    """Validate a config mapping (missing keys take the defaults) into an OriginConfig.

    Raises ConfigError with a one-line message naming the offending key.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    d = OriginConfig()
    _check_keys("", data, list(OriginConfig.__dataclass_fields__))
    ka_in = data.get("keepalive", {})
    if not isinstance(ka_in, Mapping):
        raise ConfigError(f"keepalive: expected an object, got {ka_in!r}")
    _check_keys("keepalive: ", ka_in, list(KeepaliveConfig.__dataclass_fields__))
    kd = d.keepalive
    # Kernel limits: TCP_KEEPIDLE/INTVL <= MAX_TCP_KEEPIDLE (32767), TCP_KEEPCNT <= 127.
    ka = KeepaliveConfig(
        enabled=_bool("keepalive.enabled", ka_in.get("enabled", kd.enabled)),
        idle=_int("keepalive.idle", ka_in.get("idle", kd.idle), 1, 32767),
        interval=_int("keepalive.interval", ka_in.get("interval", kd.interval), 1, 32767),
        count=_int("keepalive.count", ka_in.get("count", kd.count), 1, 127),
    )
    g = data.get
    rcvbuf = g("rcvbuf", d.rcvbuf)
    workers = g("workers", d.workers)
    tls_cert, tls_key = _pem("tls_cert", g("tls_cert")), _pem("tls_key", g("tls_key"))
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls_cert and tls_key go together: give both, or neither")
    read_rate = _int("read_rate", g("read_rate", d.read_rate), 0, 1 << 40)
    if tls_cert is not None and read_rate:
        # OpenSSL reads whole records: bites smaller than a record would leave plaintext in
        # its buffer, where epoll cannot see it
        raise ConfigError("read_rate: a slow reader is plain TCP only (not with tls_cert)")
    return OriginConfig(
        host=_host(g("host", d.host)),
        port=_int("port", g("port", d.port), 0, 65535),
        protocol=_choice("protocol", g("protocol", d.protocol), PROTOCOLS),
        close=_choice("close", g("close", d.close), CLOSE_MODES),
        close_after=_seconds("close_after", g("close_after", d.close_after)),
        response_delay=_seconds("response_delay", g("response_delay", d.response_delay)),
        response_bytes=_int(
            "response_bytes", g("response_bytes", d.response_bytes), 0, MAX_RESPONSE
        ),
        defer_accept=_int("defer_accept", g("defer_accept", d.defer_accept), 0, 3600),
        keepalive=ka,
        linger_zero=_bool("linger_zero", g("linger_zero", d.linger_zero)),
        read_delay=_seconds("read_delay", g("read_delay", d.read_delay)),
        read_rate=read_rate,
        rcvbuf=None if rcvbuf is None else _int("rcvbuf", rcvbuf, 1, 1 << 30),
        workers=None if workers is None else _int("workers", workers, 1, 256),
        backlog=_int("backlog", g("backlog", d.backlog), 1, 1 << 20),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def command(
    config: OriginConfig | Mapping[str, Any],
    *,
    python: str | None = None,
    stats_file: str | os.PathLike[str] | None = None,
    access_log: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The argv that runs the origin with ``config`` (validated here, so errors surface early)."""
    cfg = config if isinstance(config, OriginConfig) else parse_config(config)
    argv = [python or sys.executable, "-m", "chaos.lab.origin", "--config-json", cfg.to_json()]
    if stats_file is not None:
        argv += ["--stats-file", os.fspath(stats_file)]
    if access_log is not None:
        argv += ["--access-log", os.fspath(access_log)]
    return argv
