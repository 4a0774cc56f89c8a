"""Capped per-connection logs: rotation at line boundaries, the cap on disk, the newest lines
kept, and the pipe writer a proxy's output goes through."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from chaos.record import logcap


def disk_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in logcap.log_parts(path))


def lines_of(path: Path) -> list[str]:
    return "".join(Path(p).read_text() for p in logcap.log_parts(path)).splitlines()


def test_rotation_keeps_the_newest_lines_under_the_cap(tmp_path: Path):
    path = tmp_path / "proxy.log"
    log = logcap.CappedLog(path, cap=4000)
    for i in range(1000):
        log.write(f"CONN line {i:05d}\n".encode())  # 16 bytes a line
    log.close()
    assert disk_bytes(path) <= 4000
    kept = lines_of(path)
    numbers = [int(line.split()[-1]) for line in kept]
    assert numbers == list(range(1000 - len(numbers), 1000))  # in order, the newest, whole
    assert len(numbers) >= 4000 * logcap.KEEP // (logcap.KEEP + 1) // 16 - logcap.KEEP
    assert logcap.rotated_away(path) > 0
    assert len(logcap.log_parts(path)) == logcap.KEEP + 1


def test_under_the_cap_nothing_rotates(tmp_path: Path):
    path = tmp_path / "access.log"
    log = logcap.CappedLog(path, cap=1 << 20)
    log.write(b"a\n" * 100)
    log.close()
    assert logcap.log_parts(path) == [str(path)] and logcap.rotated_away(path) == 0
    logcap.remove_parts(path)
    assert logcap.log_parts(path) == []


def test_pipe_writer_caps_what_a_process_prints(tmp_path: Path):
    path = tmp_path / "proxy.log"
    writer = subprocess.Popen(logcap.command(path, 8192), stdin=subprocess.PIPE)
    assert writer.stdin is not None
    for i in range(3000):  # in odd chunks: lines torn across reads stay whole
        writer.stdin.write(f"CONN {i}\n".encode())
    writer.stdin.write(b"no newline at the end")
    writer.stdin.close()
    assert writer.wait(timeout=10) == 0  # ends at end of file
    assert disk_bytes(path) <= 8192
    kept = lines_of(path)
    assert kept[-1] == "no newline at the end"
    numbers = [int(line.split()[1]) for line in kept[:-1]]
    assert numbers == list(range(3000 - len(numbers), 3000))


def test_pipe_writer_outlives_an_interrupt(tmp_path: Path):
    """Ctrl-C reaches the whole process group: the writer keeps the proxy's last lines."""
    path = tmp_path / "proxy.log"
    writer = subprocess.Popen(
        [sys.executable, "-m", "chaos.record.logcap", str(path)], stdin=subprocess.PIPE
    )
    assert writer.stdin is not None
    writer.stdin.write(b"before\n")
    writer.stdin.flush()
    deadline = time.monotonic() + 30  # copying starts once the handler is set
    while not (path.exists() and path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.send_signal(2)
    writer.stdin.write(b"after\n")
    writer.stdin.close()
    assert writer.wait(timeout=10) == 0
    assert lines_of(path) == ["before", "after"]
