"""The proxy's own error lines, counted: measurement ``proxy_errors``, tailed from its log.

A proxy that runs out of source ports says so in its log before any counter does: nginx
writes ``connect() to 198.18.3.2:8080 failed (99: Cannot assign requested address) while
connecting to upstream`` (seed 002's line). Every ``connect() ... failed (N: text)`` line
counts, by errno: field ``connect_failed`` (all of them, always present, 0 when none) and
``connect_failed_<ERRNO NAME>`` (e.g. ``connect_failed_EADDRNOTAVAIL``) once one was seen;
totals since the proxy started. Only complete lines are read; a partial last line waits; a
log rotated under the run's ``log_cap`` is read again from its start.
"""

from __future__ import annotations

import errno
import re
from collections import Counter
from pathlib import Path

from chaos.record import schema
from chaos.record.point import FieldValue, Sample, time_ns_of

MEASUREMENT = schema.PROXY_ERRORS
CONNECT_FAILED = re.compile(rb"connect\(\)(?: to \S+)? failed \((\d+): ")


def errno_field(number: int) -> str:
    """``99`` → ``connect_failed_EADDRNOTAVAIL``."""
    return f"connect_failed_{errno.errorcode.get(number, f'E{number}')}"


class ProxyLogErrors:
    """Counts the proxy log's ``connect() failed`` lines by errno."""

    name = "proxy_errors"
    period = 0.0

    def __init__(self, path: Path, *, netns: str, tags: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.netns = netns
        self.tags = {"netns": netns, **(tags or {})}
        self._offset = 0
        self._counts: Counter[int] = Counter()

    def _read_new_lines(self) -> None:
        try:
            with self.path.open("rb") as fh:
                if fh.seek(0, 2) < self._offset:
                    self._offset = 0  # rotated (the run's log cap): a new file from its start
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        for match in CONNECT_FAILED.finditer(data[:complete]):
            self._counts[int(match.group(1))] += 1

    def sample(self, now: float) -> list[Sample]:
        self._read_new_lines()
        fields: dict[str, FieldValue] = {"connect_failed": sum(self._counts.values())}
        fields.update({errno_field(n): count for n, count in self._counts.items()})
        return [Sample(MEASUREMENT, self.tags, fields, time_ns_of(now))]

    def close(self) -> None:
        pass
