"""The run's journal, ``journal.jsonl``: timestamped events, one JSON object per line.

:class:`Journal` writes it (every event flushed as it happens, so a killed run keeps what
happened up to the kill); :func:`read_journal` is the one reader.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Journal", "read_journal"]


class Journal:
    """Append-only JSON-lines event log; every event is flushed as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the run

    def event(self, name: str, /, **fields: Any) -> dict[str, Any]:
        record = {"ts": round(time.time(), 6), "event": name, **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            self._fh.write(line + "\n")
        return record

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every event of a journal, in order. Tolerant: a run killed mid-write leaves a torn
    last line, and a line that is not an event (no JSON object, no numeric ``ts``) is skipped,
    so that what was written before it still counts."""
    events = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        ts = record.get("ts") if isinstance(record, dict) else None
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            events.append(record)
    return events
