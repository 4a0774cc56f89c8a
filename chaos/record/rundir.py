"""The run directory: ``runs/<UTC time>-<scenario>/``, everything a run leaves behind.

Layout::

    scenario.yaml        the resolved scenario, every default filled in
    journal.jsonl        timestamped events, one JSON object per line
    logs/<process>.log   output of every process the run started
    proxy/               the proxy's generated configuration
    origin-stats.json    the origin's counters at exit
    origin-access.log*   one line per request the origin served (if enabled)
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("runs")


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
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.logs = path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(path / "journal.jsonl")

    @classmethod
    def create(cls, label: str, root: Path = DEFAULT_ROOT) -> RunDir:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            suffix = f"-{attempt}" if attempt else ""
            path = root / f"{stamp}-{label}{suffix}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RuntimeError(f"cannot create a run directory under {root}")

    def write_scenario(self, text: str) -> None:
        """The resolved scenario as YAML (``loader.dump_resolved``), every default filled in."""
        (self.path / "scenario.yaml").write_text(text)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def close(self) -> None:
        self.journal.close()


def chown_to_invoker(path: Path) -> None:
    """Under sudo, give the run directory back to the user who asked for it."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if not (uid and gid):
        return
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            with contextlib.suppress(OSError):
                os.chown(name, int(uid), int(gid))
