"""Per-connection logs with a cap on disk: the proxy log and the origin's access log.

At 200 connections/s each of them grows by ~50 MB an hour; a night-long soak must not fill
the disk. A capped log is the file ``PATH`` plus up to ``KEEP`` rotated parts ``PATH.1``
(newest) .. ``PATH.KEEP`` (oldest): when writing would take ``PATH`` past
``cap // (KEEP + 1)`` bytes it is renamed to ``PATH.1`` (the others shift, the oldest is
deleted) and a new ``PATH`` is started, always at a line boundary. So the log never uses more
than ``cap`` bytes and keeps the most recent lines; :func:`log_parts` lists the parts oldest
first for a reader, :func:`rotated_away` says whether lines were deleted.

Writers: the origin's workers write their own ``PATH.<n>`` through :class:`CappedLog`; a
proxy's stdout goes through a pipe to ``python -m chaos.record.logcap PATH --cap BYTES``, which
ends when the proxy (every process holding the pipe) has exited. Stdlib only: the origin
imports this.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

#: rotated parts kept beside the current file
KEEP = 3
#: the default cap of one per-connection log (current file and rotated parts together)
DEFAULT_CAP = 256 * 2**20
#: a marker file beside the log once a part was deleted (for readers that count lines)
DROPPED_SUFFIX = ".dropped"


def log_parts(path: str | os.PathLike[str]) -> list[str]:
    """The existing parts of a capped log, oldest first (``PATH.KEEP`` .. ``PATH.1``,
    ``PATH``)."""
    base = os.fspath(path)
    candidates = [f"{base}.{i}" for i in range(KEEP, 0, -1)] + [base]
    return [p for p in candidates if os.path.exists(p)]


def rotated_away(path: str | os.PathLike[str]) -> int:
    """How many parts of this log the cap has deleted (0: the parts hold every line)."""
    try:
        with open(os.fspath(path) + DROPPED_SUFFIX, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def remove_parts(path: str | os.PathLike[str]) -> None:
    """Delete every part and the dropped marker (a new run must not read an old one's)."""
    for part in [*log_parts(path), os.fspath(path) + DROPPED_SUFFIX]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


class CappedLog:
    """Append-only writer of a capped log; ``write`` takes whole lines."""

    def __init__(self, path: str | os.PathLike[str], cap: int = DEFAULT_CAP) -> None:
        self.path = os.fspath(path)
        self.part_bytes = max(1, cap // (KEEP + 1))
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.dropped = rotated_away(self.path)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        return os.open(self.path, flags, 0o644)

    def write(self, data: bytes) -> None:
        """Append whole lines; a batch larger than the room left is split at newlines."""
        while data:
            room = self.part_bytes - self.size
            if len(data) <= room:
                chunk, data = data, b""
            else:
                cut = data.rfind(b"\n", 0, max(room, 0)) + 1
                if not cut and self.size:  # not even one line fits: a new part
                    self.rotate()
                    continue
                if not cut:  # one line longer than a part: it gets a part of its own
                    cut = data.find(b"\n") + 1 or len(data)
                chunk, data = data[:cut], data[cut:]
            self._write_all(chunk)
            if data:
                self.rotate()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except InterruptedError:
                continue
        self.size += len(data)

    def rotate(self) -> None:
        os.close(self.fd)
        oldest = f"{self.path}.{KEEP}"
        if os.path.exists(oldest):
            os.unlink(oldest)
            self.dropped += 1
            with open(self.path + DROPPED_SUFFIX, "w", encoding="ascii") as f:
                f.write(f"{self.dropped}\n")
        for i in range(KEEP - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.rename(self.path, f"{self.path}.1")
        self.fd = self._open()
        self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def pipe_main(path: str, cap: int, source: int = 0) -> int:
    """Copy ``source`` (stdin) into a capped log, line by line, until end of file."""
    log = CappedLog(path, cap)
    pending = b""
    try:
        while True:
            try:
                chunk = os.read(source, 1 << 16)
            except InterruptedError:
                continue
            if not chunk:
                break
            pending += chunk
            end = pending.rfind(b"\n") + 1
            if end:
                log.write(pending[:end])
                pending = pending[end:]
        if pending:
            log.write(pending + b"\n")
    finally:
        log.close()
    return 0


def command(path: str | os.PathLike[str], cap: int) -> list[str]:
    """The argv of the pipe writer for ``path``."""
    return [sys.executable, "-m", "chaos.record.logcap", os.fspath(path), "--cap", str(cap)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="copy stdin into a log capped on disk")
    ap.add_argument("path")
    ap.add_argument("--cap", type=int, default=DEFAULT_CAP, help="bytes, all parts together")
    args = ap.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole group: the writer must still take the
    # proxy's last lines; it ends at end of file, when the proxy has exited
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return pipe_main(args.path, args.cap)


if __name__ == "__main__":
    sys.exit(main())
