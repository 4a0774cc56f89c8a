"""The locustfiles and chaos.load.runner, run for real on loopback (no root needed).

Each test starts the lab's origin server (``python -m chaos.lab.origin``) on a free loopback
port and real ``locust`` processes against it, then reads Locust's CSVs, the origin's
counters and ``ss``. Locust is never imported into the test process (it would monkey-patch it
with gevent). Counts are bounded by --rate; every process is stopped by its fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from load_series import assert_merged_from

from chaos.errors import LoadError
from chaos.load import contract
from chaos.load.runner import LoadResult, LocustRun, parse_results
from chaos.load.series import LatencySummary, read_series, series_path, window_latency

REPO = Path(__file__).resolve().parents[2]
RAW = REPO / "locustfiles" / "raw_tcp.py"
HTTP = REPO / "locustfiles" / "http_user.py"
LOCUST = Path(sys.executable).with_name("locust")


@dataclass
class Origin:
    port: int
    proc: subprocess.Popen
    stats_file: Path

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return json.loads(self.stats_file.read_text()) if self.stats_file.exists() else {}


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Any]:
    started: list[Origin] = []

    def start(**config: Any) -> Origin:
        cfg = {"host": "127.0.0.1", "port": clean_port(), "workers": 1, **config}
        stats = tmp_path / f"origin-{len(started)}.json"
        argv = [sys.executable, "-m", "chaos.lab.origin", "--config-json", json.dumps(cfg)]
        proc = subprocess.Popen(
            [*argv, "--stats-file", str(stats)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        line = proc.stdout.readline() if proc.stdout else ""
        origin = Origin(0, proc, stats)
        started.append(origin)
        assert line.startswith("READY "), f"origin did not start: {line!r}"
        origin.port = int(line.split()[1])
        return origin

    yield start
    for origin in started:
        origin.stop()


def run_locust(
    tmp_path: Path, locustfile: Path, host: str, *args: str, seconds: int = 2, users: int = 4
) -> LoadResult:
    """One plain headless Locust process (no master/worker); its load series in
    ``tmp_path / "out"`` (see :func:`phase`)."""
    prefix = tmp_path / "out" / "locust"
    argv = [str(LOCUST), "-f", str(locustfile), "--headless", "--only-summary"]
    argv += ["-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", host]
    argv += ["--csv", str(prefix), "--exit-code-on-error", "0", *args]
    argv += ["--series-file", str(series_path(tmp_path / "out"))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return parse_results(prefix)


def phase(tmp_path: Path, name: str) -> LatencySummary:
    """A phase's latency over the whole run of :func:`run_locust` in ``tmp_path``."""
    return window_latency(tmp_path / "out", name, 0, float("inf"))


def ss_ports(state: str, port: int) -> tuple[list[int], list[int]]:
    """(local ports of sockets whose peer is :port, local ports of sockets bound to :port)."""
    out = subprocess.run(
        ["ss", "-Htan", "state", state, f"( dport = :{port} or sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    clients, servers = [], []
    for line in out.splitlines():
        fields = line.split()
        local, peer = fields[-2], fields[-1]
        local_port, peer_port = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
        if peer_port == port:
            clients.append(local_port)
        elif local_port == port:
            servers.append(local_port)
    return clients, servers


def ss_sockets(state: str, port: int, *options: str) -> list[str]:
    """Raw ``ss`` lines of sockets in ``state`` with ``port`` on either end."""
    out = subprocess.run(
        ["ss", "-Htan", *options, "state", state, f"( dport = :{port} or sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def clean_port() -> int:
    """A free port that no TIME_WAIT socket of an earlier run (of these tests) mentions, so
    the ss counts below see only this test's sockets."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not ss_sockets("time-wait", port):
            return port
    raise AssertionError("no port without TIME_WAIT sockets found")


def unused_port() -> socket.socket:
    """A bound, not listening socket: connects to its port are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# --------------------------------------------------------------------------- RawTcpUser
def test_client_close_rate_phases_and_time_wait(tmp_path: Path, origin: Any) -> None:
    """--rate 50 for 4 s: ~200 connections, all phases reported, TIME_WAIT on the client."""
    srv = origin(protocol="raw", close="client")  # the server never closes first
    rate_csv = tmp_path / "rate.csv"
    result = run_locust(
        tmp_path,
        RAW,
        f"tcp://127.0.0.1:{srv.port}",
        *("--teardown", "client-close", "--rate", "50", "--rate-csv", str(rate_csv)),
        seconds=4,
        users=5,
    )
    counters = srv.stop()

    assert 120 <= result.total_requests <= 260, result.total_requests
    assert result.total_failures == 0, result.failures_by_class
    # One Locust request per connection; the phases (in microseconds) are in the series.
    assert set(result.entries) == {"connection", "Aggregated"}
    for name in ("first_byte", "total", "close"):
        assert phase(tmp_path, name).count == result.total_requests, name
    # a connection cut short when the users stopped has connected but not ended
    assert 0 <= phase(tmp_path, "connect").count - result.total_requests <= 5
    seconds = list(read_series(tmp_path / "out"))
    assert sum(s.completed for s in seconds) == result.total_requests
    assert 0 < phase(tmp_path, "connect").p50_us < phase(tmp_path, "total").p50_us
    assert result.entries["connection"].avg_bytes == 100  # origin's default response_bytes
    # Every connection the origin accepted was reported, except at most one in flight per user
    # when Locust killed the users at the end.
    assert result.total_requests <= counters["accepted"] <= result.total_requests + 5
    assert counters["closed_by_client"] == counters["accepted"], str(counters)

    clients, servers = ss_ports("time-wait", srv.port)
    assert len(clients) >= 0.9 * result.total_requests
    assert srv.port not in clients and not servers  # TIME_WAIT is on the client side only

    rows = rate_csv.read_text().splitlines()
    assert rows[0] == "time,elapsed_s,target_rate,achieved_rate,failures,users"
    achieved = [int(r.split(",")[3]) for r in rows[1:]]
    assert sum(achieved) == result.total_requests
    assert all(r.split(",")[2] == "50" for r in rows[1:])


def test_refused_is_reported_by_errno_name(tmp_path: Path) -> None:
    with contextlib.closing(unused_port()) as sock:
        port = sock.getsockname()[1]
        # Plain HOST:PORT works as well as tcp://HOST:PORT.
        result = run_locust(tmp_path, RAW, f"127.0.0.1:{port}", "--rate", "40", seconds=2)
    assert result.total_requests > 0
    assert result.total_failures == result.total_requests
    assert result.failures_by_class == {"ECONNREFUSED": result.total_requests}
    assert [(f.name, f.error) for f in result.failures] == [("connection", "ECONNREFUSED")]
    assert "connect" not in result.entries  # no phase completed


def test_hold_after_fin_leaves_close_wait_while_held(tmp_path: Path, origin: Any) -> None:
    srv = origin(protocol="raw", close="server")
    prefix = tmp_path / "out" / "locust"
    argv = [str(LOCUST), "-f", str(RAW), "--headless", "--only-summary", "-u", "2", "-r", "2"]
    argv += ["-t", "6s", "--host", f"tcp://127.0.0.1:{srv.port}", "--csv", str(prefix)]
    argv += ["--teardown", "hold-after-fin", "--hold-seconds", "60", "--rate", "20"]
    argv += ["--rate-mode", "per-user", "--keepalive", "--keepidle", "30"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        held: list[int] = []
        deadline = time.monotonic() + 20  # Locust starts slowly on a busy machine
        while time.monotonic() < deadline and len(held) < 10:
            time.sleep(0.25)
            held, _ = ss_ports("close-wait", srv.port)
        assert len(held) >= 10, "no CLOSE_WAIT sockets on the client while holding"
        timers = ss_sockets("close-wait", srv.port, "-o")
        assert any("timer:(keepalive" in line for line in timers), timers[:3]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = parse_results(prefix)
    # Holding is done by a reaper greenlet: users kept connecting at the paced rate.
    assert result.total_requests >= 40, result.total_requests
    assert result.total_failures == 0, result.failures_by_class
    assert ss_ports("close-wait", srv.port)[0] == []  # closed when the process exited
    counters = srv.stop()
    assert counters["closed_by_server"] >= result.total_requests


def test_abort_sends_rst_and_leaves_no_time_wait(tmp_path: Path, origin: Any) -> None:
    srv = origin(protocol="raw", close="client")  # reads until the client's FIN or RST
    result = run_locust(
        tmp_path,
        RAW,
        f"tcp://127.0.0.1:{srv.port}",
        *("--teardown", "abort", "--rate", "50", "--slow-connect-ms", "0"),
    )
    counters = srv.stop()
    assert result.total_requests > 0
    # threshold 0: every connection fails as SlowConnect, though it went on to completion
    assert result.failures_by_class == {"SlowConnect": result.total_requests}
    assert result.entries["connection"].failures == result.total_requests
    clients, servers = ss_ports("time-wait", srv.port)
    # Only a connection cut short when Locust killed the users (one per user at most) closes
    # normally; every completed one was reset.
    assert len(clients) <= 4 and not servers
    assert counters["resets"] >= result.total_requests
    assert counters["closed_by_client"] <= 4  # those cut short, as above


def test_http_protocol_wait_server_fin(tmp_path: Path, origin: Any) -> None:
    srv = origin(protocol="http", close="server", response_bytes=300)
    result = run_locust(
        tmp_path,
        RAW,
        f"tcp://127.0.0.1:{srv.port}",
        *("--protocol", "http", "--teardown", "wait-server-fin", "--rate", "50"),
        *("--source-addresses", "127.0.0.2,127.0.0.3"),
    )
    counters = srv.stop()
    assert result.total_requests > 0 and result.total_failures == 0, result.failures_by_class
    assert result.entries["connection"].avg_bytes > 300  # head + body
    assert counters["closed_by_server"] >= result.total_requests
    # The server closed first: TIME_WAIT is on its side (but for connections cut short by
    # Locust killing the users at the end, at most one per user).
    clients, servers = ss_ports("time-wait", srv.port)
    assert len(clients) <= 4 and len(servers) >= 0.9 * result.total_requests
    # Round-robin over --source-addresses: both appear as the peers of those sockets.
    peers = [line.split()[-1].rsplit(":", 1)[0] for line in ss_sockets("time-wait", srv.port)]
    assert {"127.0.0.2", "127.0.0.3"} == set(peers) - {"127.0.0.1"}
    assert abs(peers.count("127.0.0.2") - peers.count("127.0.0.3")) <= 5


def test_http_user_connection_close_and_keepalive(tmp_path: Path, origin: Any) -> None:
    srv = origin(protocol="http", close="client")  # echoes Connection: close, client closes
    host = f"http://127.0.0.1:{srv.port}"
    close = run_locust(tmp_path / "close", HTTP, host, "--rate", "40", users=2)
    accepted_close = srv.stop()["accepted"]
    assert close.primary == "connection"
    assert close.total_requests > 0 and close.total_failures == 0, close.failures_by_class
    assert accepted_close >= close.total_requests  # one connection per request

    srv = origin(protocol="http", close="client")
    keep = run_locust(
        tmp_path / "keep", HTTP, f"http://127.0.0.1:{srv.port}", "--rate", "40",
        "--http-keepalive", users=2,
    )  # fmt: skip
    accepted_keep = srv.stop()["accepted"]
    assert keep.primary == "Aggregated" and "request" in keep.entries
    assert keep.total_requests > 20 and keep.total_failures == 0, keep.failures_by_class
    assert accepted_keep <= 2  # one connection per user


# --------------------------------------------------------------------------- LocustRun
def test_locustrun_master_two_workers_aggregates(tmp_path: Path, origin: Any) -> None:
    srv = origin(protocol="raw", close="server")
    run = LocustRun(
        RAW,
        host=f"tcp://127.0.0.1:{srv.port}",
        run_dir=tmp_path / "run",
        users=4,
        spawn_rate=4,
        run_time=5,
        workers=2,
        user_args=[
            *("--teardown", "wait-server-fin"),
            *("--rate-steps", "60,140", "--step-seconds", "1.5"),
        ],
        rate_csv=True,
        start_timeout=20,
    )
    result = run.run()
    run.stop()  # idempotent
    counters = srv.stop()

    assert result.workers == 2 and result.exit_code == 0
    assert result.total_failures == 0, result.failures_by_class
    # The master's total is the sum of what both workers did: the origin saw the same
    # connections (plus at most one in flight per user when the users were killed).
    assert result.total_requests <= counters["accepted"] <= result.total_requests + 4
    # Rates are for the whole test (the master told each worker to do half): 1.5 s at 60/s,
    # then 140/s (the users may start late on a busy machine: only the upper bound is sharp).
    assert 60 <= result.total_requests <= 620, result.total_requests
    # The series merged both workers' seconds: every connection Locust counted, once.
    seconds = list(read_series(tmp_path / "run"))
    assert_merged_from(seconds, 2)
    assert sum(s.completed + s.failed for s in seconds) == result.total_requests
    targets = [row["target_rate"] for row in result.rate_series]
    assert targets[0] == 60 and 140 in targets
    assert sum(row["achieved_rate"] for row in result.rate_series) == result.total_requests
    # Locust's own rolling history is flushed on its own clock and may miss the last
    # reports (the series above is the exact count): it only never runs ahead
    assert result.history and result.history[-1].total_requests <= result.total_requests
    for index in range(2):
        log = (tmp_path / "run" / "logs" / f"locust-worker-{index}.log").read_text()
        assert "Got quit message from master" in log
    assert (tmp_path / "run" / "locust" / "report.html").stat().st_size > 0
    assert run.master is not None and run.master.poll() is not None


def test_locustrun_reports_bad_option_with_log_tail(tmp_path: Path) -> None:
    run = LocustRun(
        RAW,
        host="tcp://127.0.0.1:9",
        run_dir=tmp_path / "run",
        users=1,
        spawn_rate=1,
        run_time=1,
        workers=0,
        user_args=["--no-such-option"],
    )
    with pytest.raises(LoadError) as info:
        run.run()
    assert "exited with code" in info.value.message
    assert "--no-such-option" in info.value.message
    assert info.value.hint and "not known" in info.value.hint
    run.stop()
    assert all(p.popen.poll() is not None for p in run._procs)


def test_locustrun_stop_kills_a_running_master(tmp_path: Path) -> None:
    with contextlib.closing(unused_port()) as sock:
        run = LocustRun(
            RAW,
            host=f"tcp://127.0.0.1:{sock.getsockname()[1]}",
            run_dir=tmp_path / "run",
            users=1,
            spawn_rate=1,
            run_time=600,
            workers=1,
            user_args=["--rate", "5"],
        )
        with run:
            time.sleep(0.5)
            assert run.master is not None and run.master.poll() is None
        assert all(p.popen.poll() is not None for p in run._procs)
        assert os.path.exists(tmp_path / "run" / "logs" / "locust-worker-0.log")


def test_timeouts_are_enforced_by_the_watchdog(tmp_path: Path, origin: Any) -> None:
    slow = origin(protocol="raw", close="server", response_delay=5)
    result = run_locust(
        tmp_path,
        RAW,
        f"tcp://127.0.0.1:{slow.port}",
        *("--read-timeout", "0.3", "--rate", "10"),
        seconds=2,
        users=2,
    )
    assert result.total_requests > 0
    assert result.failures_by_class == {"ReadTimeout": result.total_requests}
    assert 250 <= result.entries["connection"].median_ms <= 600

    # A listener whose accept queue is full drops SYNs: connect() hangs until our timeout.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.create_connection(("127.0.0.1", port), timeout=1) for _ in range(1)]
        try:
            result = run_locust(
                tmp_path / "2",
                RAW,
                f"tcp://127.0.0.1:{port}",
                *("--connect-timeout", "0.3", "--rate", "10"),
                seconds=2,
                users=2,
            )
        finally:
            for sock in fillers:
                sock.close()
    assert result.total_requests > 0
    assert result.failures_by_class == {"ConnectTimeout": result.total_requests}


def test_idle_slow_reader_and_half_close(tmp_path: Path, origin: Any) -> None:
    host = "tcp://127.0.0.1:{}"
    srv = origin(protocol="raw", close="client")
    idle = run_locust(
        tmp_path / "idle",
        RAW,
        host.format(srv.port),
        *("--teardown", "idle-before-send", "--idle-ms", "200", "--rate", "10"),
        users=2,
    )
    assert idle.total_requests > 0 and idle.total_failures == 0, idle.failures_by_class
    assert idle.entries["connection"].min_ms >= 200
    assert phase(tmp_path / "idle", "first_byte").max_us < 200_000  # the idle is not in it

    half = run_locust(
        tmp_path / "half",
        RAW,
        host.format(srv.port),
        *("--teardown", "half-close", "--rate", "20"),
        users=2,
    )
    counters = srv.stop()
    assert half.total_requests > 0 and half.total_failures == 0, half.failures_by_class
    # The origin saw our FIN (EOF) first every time, answered, then closed.
    assert counters["closed_by_client"] >= idle.total_requests + half.total_requests

    big = origin(protocol="raw", close="server", response_bytes=40000)
    slow = run_locust(
        tmp_path / "slow",
        RAW,
        host.format(big.port),
        *("--teardown", "slow-reader", "--rcvbuf", "4096", "--read-rate", "40000"),
        seconds=3,
        users=1,
    )
    assert slow.total_requests >= 1 and slow.total_failures == 0, slow.failures_by_class
    assert phase(tmp_path / "slow", "total").min_us >= 800_000  # 40 kB at 40 kB/s


def test_web_ui_form_offers_the_locustfile_options() -> None:
    """Locust's web UI lists our options in its start form, with choices (the form is built
    from Locust's ``ui_extra_args_dict``, asked here in a process of its own); the
    controller's plumbing (files, hints) stays off it."""
    code = (
        "import json, sys; sys.path.insert(0, 'locustfiles'); import locust, raw_tcp;"
        " from locust.argument_parser import ui_extra_args_dict;"
        " print(json.dumps(ui_extra_args_dict(['-f', 'locustfiles/raw_tcp.py'])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    options = json.loads(proc.stdout.strip().splitlines()[-1])
    assert options["teardown"]["choices"] == list(contract.TEARDOWN_MODES)
    assert options["rate_mode"]["choices"] == list(contract.RATE_MODES)
    assert options["rate_mode"]["default_value"] == "per-user"
    assert {"rate", "rate_steps", "source_addresses", "slow_connect_ms"} <= set(options)
    assert not {"series_file", "rate_csv", "failures_csv", "workers_hint"} & set(options)
