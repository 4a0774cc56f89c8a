"""The run's journal, ``journal.jsonl``: timestamped events, one JSON object per line.

:class:`Journal` writes it (every event flushed as it happens, so a killed run keeps what
happened up to the kill); :func:`read_journal` is the one reader, and :func:`fault_windows`
the one reading of its fault events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FaultWindow", "Journal", "fault_windows", "read_journal"]


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


# --- fault windows -------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultWindow:
    """One window of one scheduled fault, read from the journal's ``fault.apply`` and
    ``fault.revert`` events: the one derivation that expectations (``expect.Timeline``) and
    the report (its fault bands) share.

    The steps of a ramp form one window (same ``spec`` and ``window``: break before make,
    so the fault never left); an irreversible fault (kill) is an instant; one never reverted
    has ``reverted`` None (the run died, or the window lasts to the end of the load).
    Times are as the events carry them (unix seconds in a journal)."""

    spec: int  # its index in the scenario's ``faults:``
    window: int  # which repetition of it (``every``)
    id: str  # the first step's handle
    kind: str
    target: str
    applied: float  # the first apply began (its event's ts less its apply_ms)
    in_effect: float  # the first apply was done (its event's ts)
    reverted: float | None  # the last revert; ``applied`` for an instant
    steps: int = 1
    instant: bool = False

    def until(self, end: float) -> float:
        """When the window closed: its last revert, else ``end`` (it lasted to the end)."""
        return self.reverted if self.reverted is not None else end


def fault_windows(events: Iterable[Mapping[str, Any]]) -> list[FaultWindow]:
    """The fault windows of a journal's events, in the order they were applied.

    Events without ``spec`` (not from a schedule) are each a window of their own handle."""
    first: dict[tuple[Any, ...], Mapping[str, Any]] = {}  # window key -> its first apply
    applied: dict[tuple[Any, ...], float] = {}
    steps: dict[tuple[Any, ...], int] = {}
    reverted: dict[tuple[Any, ...], float] = {}
    window_of: dict[str, tuple[Any, ...]] = {}
    for event in events:
        name, ts = event.get("event"), float(event.get("ts", 0.0))
        if name == "fault.apply":
            fid = str(event.get("id", ""))
            key: tuple[Any, ...] = (
                (int(event["spec"]), int(event.get("window", 0)))
                if "spec" in event
                else ("handle", fid)
            )
            window_of[fid] = key
            began = ts - float(event.get("apply_ms", 0.0)) / 1000
            applied[key] = min(applied.get(key, began), began)
            steps[key] = steps.get(key, 0) + 1
            first.setdefault(key, {**event, "ts": ts})
        elif name == "fault.revert" and str(event.get("id", "")) in window_of:
            key = window_of[str(event.get("id", ""))]
            reverted[key] = max(reverted.get(key, ts), ts)
    windows = []
    for key, event in first.items():
        instant = event.get("reversible") is False
        windows.append(
            FaultWindow(
                spec=int(event.get("spec", 0)),
                window=int(event.get("window", 0)),
                id=str(event.get("id", "")),
                kind=str(event.get("kind", event.get("type", ""))),
                target=str(event.get("target", "")),
                applied=applied[key],
                in_effect=float(event["ts"]),
                reverted=applied[key] if instant else reverted.get(key),
                steps=steps[key],
                instant=instant,
            )
        )
    return sorted(windows, key=lambda w: w.applied)
