"""The on-disk spool: points that InfluxDB has not accepted yet, kept in the run directory.

``spool.lp`` is append-only line protocol; ``spool.offset`` holds the byte offset of the first
line not yet delivered, rewritten atomically after every delivered batch. A batch is
committed only after the server acknowledged it, so a crash can repeat a batch but never lose
one. When everything is delivered both files are emptied, so a spool that was used for a
short outage does not grow for the rest of the run.

Lines that may already be stored on the server (their write timed out after it was sent) are
marked by byte range, in memory: a replay counts them as possibly duplicated (a spool left
by a crashed run has lost the marks; its lines count as plain replays).

Only one thread (the writer's) uses a spool; it is not locked.
"""

from __future__ import annotations

import os
from pathlib import Path

from chaos.record.rundir import RunFiles

SPOOL_FILE = RunFiles.SPOOL
OFFSET_FILE = "spool.offset"


class Spool:
    def __init__(self, directory: Path) -> None:
        self.path = directory / SPOOL_FILE
        self._offset_path = directory / OFFSET_FILE
        self._offset = self._read_offset()
        self._fh = open(self.path, "ab+")  # noqa: SIM115 - lives as long as the writer
        self.pending = self._count_pending()
        self._maybe_stored: list[tuple[int, int]] = []  # byte ranges [start, end)

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _count_pending(self) -> int:
        """Lines after the committed offset (a spool left behind by an earlier run)."""
        self._fh.seek(self._offset)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: self._fh.read(1 << 20), b""))

    def append(self, data: bytes, count: int, maybe_stored: bool = False) -> None:
        """Add ``count`` newline-terminated lines (``maybe_stored``: see the module doc)."""
        if not count:
            return
        self._fh.seek(0, os.SEEK_END)
        if maybe_stored:
            start = self._fh.tell()
            self._maybe_stored.append((start, start + len(data)))
        self._fh.write(data)
        self._fh.flush()  # in the page cache: survives the process, not a power cut
        self.pending += count

    def read_batch(self, max_lines: int) -> tuple[bytes, int, int]:
        """Up to ``max_lines`` undelivered lines: (body, line count, offset after them)."""
        self._fh.seek(self._offset)
        lines = []
        for _ in range(max_lines):
            line = self._fh.readline()
            if not line.endswith(b"\n"):  # end of file (a partial line cannot happen)
                break
            lines.append(line)
        end = self._offset + sum(map(len, lines))
        return b"".join(lines), len(lines), end

    def mark_maybe_stored(self, end: int) -> None:
        """The undelivered lines up to byte ``end`` may be stored (a replay timed out)."""
        self._maybe_stored.append((self._offset, end))

    def maybe_stored_lines(self, body: bytes) -> int:
        """How many lines of ``body`` (just read from the head) carry the mark."""
        if not self._maybe_stored:
            return 0
        start, end = self._offset, self._offset + len(body)
        marked = bytearray(len(body))  # a line counts once, however many marks cover it
        for low, high in self._maybe_stored:
            low, high = max(low, start), min(high, end)
            if low < high:
                marked[low - start : high - start] = b"\x01" * (high - low)
        return sum(
            1
            for line_start, line_end in _line_spans(body)
            if marked[line_start : line_end].count(1)
        )

    def commit(self, end: int, count: int) -> None:
        """The lines up to byte ``end`` were delivered."""
        self.pending -= count
        if self.pending <= 0:
            self.pending = 0
            self._fh.truncate(0)
            end = 0
            self._maybe_stored.clear()
        else:
            self._maybe_stored = [(lo, hi) for lo, hi in self._maybe_stored if hi > end]
        tmp = self._offset_path.with_suffix(".tmp")
        tmp.write_text(str(end))
        os.replace(tmp, self._offset_path)
        self._offset = end

    def close(self) -> None:
        self._fh.close()
        if self.pending == 0:  # nothing left: leave no empty files behind
            for path in (self.path, self._offset_path):
                path.unlink(missing_ok=True)


def _line_spans(body: bytes) -> list[tuple[int, int]]:
    spans, start = [], 0
    while start < len(body):
        end = body.find(b"\n", start) + 1 or len(body)
        spans.append((start, end))
        start = end
    return spans
