"""The on-disk spool: points that InfluxDB has not accepted yet, kept in the run directory.

``spool.lp`` is append-only line protocol; ``spool.offset`` holds the byte offset of the first
line not yet delivered, rewritten atomically after every delivered batch. A batch is
committed only after the server acknowledged it, so a crash can repeat a batch but never lose
one. When everything is delivered both files are emptied, so a spool that was used for a
short outage does not grow for the rest of the run.

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

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _count_pending(self) -> int:
        """Lines after the committed offset (a spool left behind by an earlier run)."""
        self._fh.seek(self._offset)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: self._fh.read(1 << 20), b""))

    def append(self, data: bytes, count: int) -> None:
        """Add ``count`` newline-terminated lines."""
        if not count:
            return
        self._fh.seek(0, os.SEEK_END)
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

    def commit(self, end: int, count: int) -> None:
        """The lines up to byte ``end`` were delivered."""
        self.pending -= count
        if self.pending <= 0:
            self.pending = 0
            self._fh.truncate(0)
            end = 0
        tmp = self._offset_path.with_suffix(".tmp")
        tmp.write_text(str(end))
        os.replace(tmp, self._offset_path)
        self._offset = end

    def close(self) -> None:
        self._fh.close()
        if self.pending == 0:  # nothing left: leave no empty files behind
            for path in (self.path, self._offset_path):
                path.unlink(missing_ok=True)
