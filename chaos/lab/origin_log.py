"""What the origin server (:mod:`chaos.lab.origin`) leaves behind, and its readers: the
stats file (:data:`COUNTERS`, summed over workers) and the access log, one capped file
``PATH.<n>`` per worker (:func:`worker_log`), read over every part and worker by
:func:`read_access_records`. Stdlib only, like the server.
"""

from __future__ import annotations

import json
import os

from chaos.record import logcap

__all__ = ["COUNTERS", "access_log_rotated_away", "read_access_log", "read_access_records",
           "read_stats", "worker_log", "worker_logs"]  # fmt: skip

COUNTERS = (
    "accepted",
    "requests",
    "responses",
    "bytes_in",
    "bytes_out",
    "closed_by_server",
    "closed_by_client",
    "resets",
    "timeouts",
    "errors",
    "closed_at_exit",
    "accept_errors",
)


def worker_log(path: str | os.PathLike[str], worker: int) -> str:
    """The access log of worker ``worker``: ``PATH.<worker>``."""
    return f"{os.fspath(path)}.{worker}"


def worker_logs(path: str | os.PathLike[str]) -> list[str]:
    """The per-worker logs ``PATH.<n>`` that exist, by worker index."""
    base = os.fspath(path)
    d = os.path.dirname(base) or "."
    prefix = os.path.basename(base) + "."
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    numbered = [n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()]
    numbered.sort(key=lambda n: int(n[len(prefix) :]))
    return [os.path.join(d, n) for n in numbered]


def _access_log_parts(path: str | os.PathLike[str]) -> list[str]:
    """Every file of the access log: ``PATH`` (older layout), then each worker's capped log
    with its rotated parts, oldest first."""
    base = os.fspath(path)
    parts = [base] if os.path.exists(base) else []
    for worker_log in worker_logs(base):
        parts += logcap.log_parts(worker_log)
    return parts


def access_log_rotated_away(path: str | os.PathLike[str]) -> int:
    """Parts of the access log its cap deleted, over all workers (0: every line is there)."""
    return sum(logcap.rotated_away(worker_log) for worker_log in worker_logs(path))


def read_access_records(path: str | os.PathLike[str]) -> list[tuple[float, str, int, int, int]]:
    """All access-log lines of every worker part, as (time, peer_ip, peer_port, bytes_in,
    bytes_out), sorted by time. Complete once the origin has exited (or after ~1 s)."""
    out: list[tuple[float, str, int, int, int]] = []
    for part in _access_log_parts(path):
        with open(part, encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) != 4:
                    continue  # a torn last line of a killed worker
                ip, _, port = fields[1].rpartition(":")  # rpartition: IPv6 has colons too
                out.append((float(fields[0]), ip, int(port), int(fields[2]), int(fields[3])))
    out.sort(key=lambda r: r[0])
    return out


def read_access_log(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """The (peer_ip, peer_port) of every served request, over all worker parts, by time."""
    return [(r[1], r[2]) for r in read_access_records(path)]


def read_stats(path: str | os.PathLike[str]) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        data: dict[str, int] = json.load(f)
    return data
