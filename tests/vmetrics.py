"""A real victoria-metrics server for the sink tests: loopback, a free port, a tmp storage dir.

victoria-metrics (Debian package, /usr/bin/victoria-metrics) accepts InfluxDB line protocol on
``/api/v2/write`` and stores every field as a metric named ``<measurement>_<field>`` with the
tags as labels (string fields become 0). ``/api/v1/export`` reads raw points back, duplicates
included, which is what the exactly-once checks need; ``/internal/force_flush`` makes freshly
written points visible first.

Use the ``victoria`` fixture (import ``victoria_fixture`` into a test module); the server is
stopped (SIGTERM, then SIGKILL) whatever the test does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARY = "/usr/bin/victoria-metrics"


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    values: list[float]
    timestamps_ms: list[int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VictoriaMetrics:
    def __init__(
        self, storage: Path, log: Path, port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.storage = storage
        self.extra_args = extra_args
        self.log_path = log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own copy
        try:
            self.proc = subprocess.Popen(
                [
                    BINARY,
                    f"-storageDataPath={self.storage}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=100y",
                    "-loggerLevel=WARN",
                    # one copy of identical points (a batch replayed after a write that timed
                    # out once sent), as InfluxDB does: the README's InfluxDB section
                    "-dedup.minScrapeInterval=1ms",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if self._get("/health").strip() == "OK":
                    return
            time.sleep(0.05)
        raise RuntimeError("victoria-metrics did not answer /health in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # graceful: finishes in-flight writes, flushes to disk
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _get(self, path: str, timeout: float = 10.0) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.read().decode()

    def flush(self) -> None:
        self._get("/internal/force_flush")

    def export(self, match: str, points: int | None = None, timeout: float = 20.0) -> list[Series]:
        """Every raw point of the series matching a selector, e.g. ``{run="x"}``.

        Points become visible in parts, a second or so after they were written, even after a
        forced flush. With ``points``, this reads until at least that many are visible, then
        once more a second later (so that late duplicates show too); without, until two reads
        1.5 s apart agree and are not empty.
        """
        deadline = time.monotonic() + timeout
        previous: list[Series] | None = None
        while True:
            self.flush()
            current = self._export_once(match)
            total = sum(len(s.values) for s in current)
            if time.monotonic() > deadline:
                return current
            if points is not None and total >= points:
                time.sleep(1.0)
                self.flush()
                return self._export_once(match)
            if points is None and current and current == previous:
                return current
            previous = current
            time.sleep(1.5 if points is None else 0.3)

    def _export_once(self, match: str) -> list[Series]:
        query = urllib.parse.urlencode({"match[]": match})
        out = []
        for line in self._get(f"/api/v1/export?{query}", timeout=60).splitlines():
            if line.strip():
                row = json.loads(line)
                out.append(Series(row["metric"], row["values"], row["timestamps"]))
        return sorted(out, key=lambda s: sorted(s.labels.items()))

    def post(self, body: bytes) -> int:
        request = urllib.request.Request(
            f"{self.url}/api/v2/write?org=o&bucket=b&precision=ns", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)


def start_victoria(tmp: Path) -> VictoriaMetrics:
    if not shutil.which(BINARY):
        pytest.skip(f"{BINARY} is not installed (Debian package victoria-metrics; scripts/setup)")
    server = VictoriaMetrics(tmp / "vm-data", tmp / "vm.log")
    server.start()
    return server


@pytest.fixture(name="victoria")
def victoria_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    server = start_victoria(tmp_path_factory.mktemp("victoria"))
    try:
        yield server
    finally:
        server.stop()
