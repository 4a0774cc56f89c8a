"""The on-disk record of faults that may be active, so a crash can always be undone.

One JSON file per fault, ``<dir>/<id>.json`` (``CHAOS_LEDGER_DIR``, default
``/run/chaos/faults``; ``/run`` is a tmpfs, and a reboot undoes every fault too). An entry is
written — to a temporary file, fsync'd, renamed, then the directory fsync'd — *before* the
fault touches the kernel, and removed only after a successful revert. So at any moment the
ledger holds a superset of what is applied, and ``chaos revert-all`` (revert is idempotent)
restores everything after even a SIGKILL of the controller.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.faults.base import Handle
from chaos.kernel import processes

DEFAULT_DIR = "/run/chaos/faults"


def default_dir() -> Path:
    # Read at call time, so tests (and parallel runs) can point it elsewhere.
    return Path(os.environ.get("CHAOS_LEDGER_DIR", DEFAULT_DIR))


@dataclass(frozen=True)
class Entry:
    handle: Handle
    since: float  # wall clock, for people
    seq: int  # ns since the epoch at write time: orders entries for a LIFO revert-all
    owner_pid: int
    owner_started: int | None
    info: dict[str, Any]

    def owner_alive(self) -> bool:
        return processes.start_time(self.owner_pid) == self.owner_started

    def to_json(self) -> dict[str, Any]:
        return {
            "handle": self.handle.to_json(),
            "since": self.since,
            "seq": self.seq,
            "owner_pid": self.owner_pid,
            "owner_started": self.owner_started,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            handle=Handle.from_json(data["handle"]),
            since=float(data["since"]),
            seq=int(data["seq"]),
            owner_pid=int(data["owner_pid"]),
            owner_started=data.get("owner_started"),
            info=dict(data.get("info", {})),
        )


@dataclass(frozen=True)
class BadEntry:
    """A ledger file that cannot be read: reported, never silently dropped."""

    path: Path
    error: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    def __init__(self, directory: Path | str | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_dir()

    def path(self, fault_id: str) -> Path:
        return self.dir / f"{fault_id}.json"

    def write(self, handle: Handle, **info: Any) -> Entry:
        """Durably record ``handle`` (call before applying it)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = Entry(
            handle=handle,
            since=time.time(),
            seq=time.time_ns(),
            owner_pid=os.getpid(),
            owner_started=processes.start_time(os.getpid()),
            info=info,
        )
        final = self.path(handle.id)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(entry.to_json(), fh, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(final)
        _fsync_dir(self.dir)
        return entry

    def remove(self, fault_id: str) -> None:
        try:
            self.path(fault_id).unlink()
        except FileNotFoundError:
            return
        _fsync_dir(self.dir)

    def entries(self) -> tuple[list[Entry], list[BadEntry]]:
        """Every entry, newest first (the order to revert them in), and unreadable files."""
        good: list[Entry] = []
        bad: list[BadEntry] = []
        if not self.dir.is_dir():
            return good, bad
        for path in sorted(self.dir.glob("*.json")):
            try:
                good.append(Entry.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                bad.append(BadEntry(path, f"{type(exc).__name__}: {exc}"))
        good.sort(key=lambda e: e.seq, reverse=True)
        return good, bad
