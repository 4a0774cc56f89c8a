"""The on-disk record of faults that may be active, so a crash can always be undone.

One JSON file per fault, ``<dir>/<id>.json`` (``CHAOS_LEDGER_DIR``, default
``/run/chaos/faults``; ``/run`` is a tmpfs, and a reboot undoes every fault too). An entry is
written — to a temporary file, fsync'd, renamed, then the directory fsync'd — *before* the
fault touches the kernel, and removed only after a successful revert. So at any moment the
ledger holds a superset of what is applied, and ``chaos revert-all`` (revert is idempotent)
restores everything after even a SIGKILL of the controller.

Every entry names its owner (pid, start time, host: :class:`~chaos.kernel.processes.Owner`):
one ledger serves every controller and agent on the host, and `revert-all` leaves the
faults of live owners alone unless forced.

The ledger is also the source of truth for faults that overlap across processes (two sysctl
windows on one key, two stops of one process): :meth:`Ledger.lock` (``flock`` on
``<dir>/.lock``, re-entrant within a process) serialises every apply and revert, so a fault
sees the others that hold what it changes (:meth:`Ledger.holders`) and the last one out
restores the original (see :class:`chaos.faults.base.Fault.stacks`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.faults.base import Handle
from chaos.kernel.processes import Owner

DEFAULT_DIR = "/run/chaos/faults"


def default_dir() -> Path:
    # Read at call time, so tests (and parallel runs) can point it elsewhere.
    return Path(os.environ.get("CHAOS_LEDGER_DIR", DEFAULT_DIR))


@dataclass(frozen=True)
class Entry:
    handle: Handle
    since: float  # wall clock, for people
    seq: int  # ns since the epoch at write time: orders entries for a LIFO revert-all
    owner: Owner
    info: dict[str, Any]

    def owner_alive(self) -> bool:
        return self.owner.alive()

    def to_json(self) -> dict[str, Any]:
        return {
            "handle": self.handle.to_json(),
            "since": self.since,
            "seq": self.seq,
            "owner_pid": self.owner.pid,
            "owner_started": self.owner.started,
            "owner_host": self.owner.host,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            handle=Handle.from_json(data["handle"]),
            since=float(data["since"]),
            seq=int(data["seq"]),
            owner=Owner(
                int(data["owner_pid"]), data.get("owner_started"), data.get("owner_host", "")
            ),
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


class _DirLock:
    """An exclusive ``flock`` on a ledger directory, re-entrant for the thread holding it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd = -1

    @contextmanager
    def held(self) -> Iterator[None]:
        with self.thread_lock:
            if self.depth == 0:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    os.close(self.fd)  # closing releases the flock
                    self.fd = -1


_locks: dict[Path, _DirLock] = {}
_locks_guard = threading.Lock()


class Ledger:
    def __init__(self, directory: Path | str | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_dir()

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the ledger (every process on this host, re-entrant in this one)."""
        key = self.dir.absolute()
        with _locks_guard:
            dir_lock = _locks.setdefault(key, _DirLock(key))
        return dir_lock.held()

    def holders(self, handle: Handle) -> list[Handle]:
        """Other recorded faults of ``handle``'s kind, oldest first: those that may hold
        what ``handle`` changes (call under :meth:`lock`)."""
        others = [e for e in self.entries()[0] if e.handle.kind == handle.kind]
        return [e.handle for e in reversed(others) if e.handle.id != handle.id]

    def path(self, fault_id: str) -> Path:
        return self.dir / f"{fault_id}.json"

    def write(self, handle: Handle, **info: Any) -> Entry:
        """Durably record ``handle`` (call before applying it)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = Entry(
            handle=handle,
            since=time.time(),
            seq=time.time_ns(),
            owner=Owner.current(),
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
