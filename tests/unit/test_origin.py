"""The origin server, run for real as a subprocess on 127.0.0.1 (random ports, no root).

Socket states are read from /proc/net/tcp (TIME_WAIT, SYN_RECV) and ``ss`` (timers, skmem).
Every server is started in its own session and its whole process group is killed at teardown.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.lab import origin as origin_mod
from chaos.lab.origin_config import ConfigError, command, parse_config
from chaos.lab.origin_log import COUNTERS, read_access_log, read_access_records, read_stats

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TCP_STATES = {"01": "ESTABLISHED", "03": "SYN_RECV", "06": "TIME_WAIT"}
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


# --------------------------------------------------------------------------- harness


class Origin:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, tmp: Path) -> None:
        self.proc = proc
        self.port = port
        self.stats_path = tmp / "stats.json"
        self.log_path = tmp / "access.log"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, and check that no process of the group survived."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        assert wait_for(lambda: not group_members(self.proc.pid), 5.0), "workers left behind"
        return code

    def stats(self) -> dict[str, int]:
        assert self.stop() == 0
        return read_stats(self.stats_path)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(p))
    return out


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def start_origin(tmp: Path, config: dict[str, Any], *, access_log: bool = True) -> Origin:
    cfg = {"host": HOST, "port": 0, "workers": 2, **config}
    argv = command(cfg, python=sys.executable, stats_file=tmp / "stats.json")
    if access_log:
        argv += ["--access-log", str(tmp / "access.log")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("READY "):
        kill_group(proc)
        pytest.fail(f"origin did not print READY (got {line!r}, exit {proc.poll()})")
    return Origin(proc, int(line.split()[1]), tmp)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Callable[..., Origin]]:
    started: list[Origin] = []
    n = 0

    def factory(access_log: bool = True, **config: Any) -> Origin:
        nonlocal n
        n += 1
        d = tmp_path / f"o{n}"
        d.mkdir()
        o = start_origin(d, config, access_log=access_log)
        started.append(o)
        return o

    yield factory
    for o in started:
        if o.proc.poll() is None:
            kill_group(o.proc)
        if o.proc.stdout:
            o.proc.stdout.close()
        assert wait_for(lambda o=o: not group_members(o.proc.pid), 5.0)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    return s


def read_responses(s: socket.socket, count: int) -> list[tuple[dict[str, str], bytes]]:
    """Exactly `count` HTTP responses, each as (lower-cased headers, body), by Content-Length."""
    buf = b""
    out: list[tuple[dict[str, str], bytes]] = []

    def fill(until: Callable[[bytes], bool]) -> bytes:
        data = buf
        while not until(data):
            chunk = s.recv(65536)
            assert chunk, f"EOF inside a response: {data!r}"
            data += chunk
        return data

    for _ in range(count):
        buf = fill(lambda b: b"\r\n\r\n" in b)
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK"
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers["content-length"])
        buf = fill(lambda b, n=n: len(b) >= n)
        out.append((headers, buf[:n]))
        buf = buf[n:]
    assert buf == b"", "bytes after the last expected response"
    return out


def read_http(s: socket.socket) -> tuple[dict[str, str], bytes]:
    return read_responses(s, 1)[0]


def is_eof(s: socket.socket, timeout: float) -> bool:
    """True if the peer closed (EOF) within timeout; False if the connection stays open."""
    r, _, _ = select.select([s], [], [], timeout)
    return bool(r) and s.recv(1) == b""


def tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local_port, remote_port, state, inode) of every IPv4 TCP socket of this namespace."""
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            lport = int(fields[1].split(":")[1], 16)
            rport = int(fields[2].split(":")[1], 16)
            out.append((lport, rport, TCP_STATES.get(fields[3], fields[3]), int(fields[9])))
    return out


def state_of(local: int, remote: int) -> set[str]:
    return {st for lp, rp, st, _ in tcp_sockets() if lp == local and rp == remote}


def accepted(local: int, remote: int) -> bool:
    """A socket gets an inode only when accept() hands it to the process."""
    return any(lp == local and rp == remote and ino for lp, rp, _, ino in tcp_sockets())


def tw_overflows() -> int:
    """TcpExt TCPTimeWaitOverflow: TIME_WAITs the kernel dropped because the table was full."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["TCPTimeWaitOverflow"])
    return 0


def assert_time_wait(local: int, remote: int, overflows_before: int) -> None:
    """(local, remote) reaches TIME_WAIT. If other load on this host filled the TIME_WAIT
    table (tcp_max_tw_buckets) meanwhile, the kernel may have dropped ours: skip, not fail."""
    if wait_for(lambda: "TIME_WAIT" in state_of(local, remote), 2.0):
        return
    if tw_overflows() > overflows_before:
        pytest.skip("TIME_WAIT table full (TCPTimeWaitOverflow rose): cannot observe TIME_WAIT")
    pytest.fail(f"no TIME_WAIT for {local}->{remote}: {state_of(local, remote)}")


def ss(port: int, *opts: str) -> str:
    out = subprocess.run(
        ["ss", "-tanH", *opts, f"( sport = :{port} )"], capture_output=True, text=True, check=True
    )
    return out.stdout


# --------------------------------------------------------------------------- config (no server)


def test_defaults_and_round_trip() -> None:
    cfg = parse_config({})
    assert (cfg.port, cfg.protocol, cfg.close, cfg.response_bytes, cfg.backlog) == (
        8080,
        "http",
        "server",
        100,
        4096,
    )
    assert cfg.keepalive.enabled is False and cfg.keepalive.idle == 7200
    custom = parse_config(
        {"close": "server-after", "close_after": 2, "keepalive": {"enabled": True}}
    )
    assert custom.close_after == 2.0 and custom.keepalive.enabled and custom.keepalive.count == 9
    assert parse_config(json.loads(custom.to_json())) == custom


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"bogus": 1}, "bogus"),
        ({"close": "later"}, "close"),
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"response_delay": -1}, "response_delay"),
        ({"keepalive": {"enabled": True, "probes": 3}}, "probes"),
        ({"keepalive": {"idle": 0}}, "keepalive.idle"),
        ({"host": "localhost"}, "host"),
        ({"workers": 0}, "workers"),
        ({"rcvbuf": "small"}, "rcvbuf"),
    ],
)
def test_parse_config_rejects(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config(config)


def test_read_access_log_reads_every_part(tmp_path: Path) -> None:
    base = tmp_path / "access.log"
    (tmp_path / "access.log.0").write_text("2.5 10.0.0.1:1000 20 120\n")
    (tmp_path / "access.log.1").write_text("1.5 10.0.0.2:2000 20 120\n2.0 ::1:3000 1 2\n")
    (tmp_path / "access.log.x").write_text("9.0 10.0.0.9:9 1 1\n")  # not a worker part
    assert read_access_log(base) == [("10.0.0.2", 2000), ("::1", 3000), ("10.0.0.1", 1000)]
    assert read_access_records(base)[0] == (1.5, "10.0.0.2", 2000, 20, 120)


# --------------------------------------------------------------------------- bad config: exit 2


@pytest.mark.parametrize(
    ("config_json", "needle"),
    [
        ('{"bogus": 1}', "bogus"),
        ('{"close": "never"}', "close"),
        ('{"response_bytes": -5}', "response_bytes"),
        ("{not json", "JSON"),
        ("[1, 2]", "object"),
    ],
)
def test_bad_config_exits_2_with_one_line(config_json: str, needle: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "chaos.lab.origin", "--config-json", config_json],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert needle in r.stderr


def test_port_in_use_is_one_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            command({"host": HOST, "port": port}, python=sys.executable),
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            timeout=20,
        )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "in use" in r.stderr


def test_unwritable_access_log_fails_before_ready(tmp_path: Path) -> None:
    argv = command({"host": HOST, "port": 0}, python=sys.executable)
    r = subprocess.run(
        [*argv, "--access-log", str(tmp_path / "missing-dir" / "access.log")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=20,
    )
    assert (r.returncode, r.stdout) == (1, "")
    assert "Traceback" not in r.stderr and "access log" in r.stderr


# --------------------------------------------------------------------------- http + close modes


def test_http_close_server(origin: Callable[..., Origin]) -> None:
    o = origin(response_bytes=1234, close="server")
    overflows = tw_overflows()
    with connect(o.port) as c:
        cport = c.getsockname()[1]
        c.sendall(GET)
        headers, body = read_http(c)
        assert len(body) == 1234 and headers["connection"] == "close"
        assert is_eof(c, 2.0)
    # The server closed first: TIME_WAIT sits on the origin's side of the 4-tuple only.
    assert "TIME_WAIT" not in state_of(cport, o.port)
    s = o.stats()
    assert_time_wait(o.port, cport, overflows)
    assert (s["accepted"], s["requests"], s["responses"], s["closed_by_server"]) == (1, 1, 1, 1)


TCP_CLOSE_WAIT = 8  # include/net/tcp_states.h


def test_close_server_fin_rides_on_the_last_byte(origin: Callable[..., Origin]) -> None:
    """A peer that closes the moment it holds the whole response (nginx's upstream side)
    must find the origin's FIN already there, or it closes first and the TIME_WAIT lands
    on the proxy: the socket is CLOSE_WAIT as soon as the response is readable at all."""
    o = origin(response_bytes=100, close="server")
    states = []
    for _ in range(40):
        with connect(o.port) as c:
            c.sendall(GET)
            select.select([c], [], [], 5.0)
            states.append(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])
            read_http(c)
    assert states == [TCP_CLOSE_WAIT] * 40


def test_http_close_client_keeps_alive(origin: Callable[..., Origin]) -> None:
    o = origin(close="client", response_bytes=10)
    overflows = tw_overflows()
    c = connect(o.port)
    cport = c.getsockname()[1]
    for _ in range(3):
        c.sendall(GET)
        headers, body = read_http(c)
        assert len(body) == 10 and headers["connection"] == "keep-alive"
    assert not is_eof(c, 0.3), "server closed a close=client connection"
    # Connection: close is echoed, but the server still waits for the client's FIN.
    c.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    headers, _ = read_http(c)
    assert headers["connection"] == "close"
    assert not is_eof(c, 0.3)
    c.close()
    s = o.stats()
    assert (s["requests"], s["responses"]) == (4, 4)
    assert (s["closed_by_client"], s["closed_by_server"]) == (1, 0)
    assert "TIME_WAIT" not in state_of(o.port, cport)  # the origin closed second
    assert_time_wait(cport, o.port, overflows)


def test_http_body_and_pipelining(origin: Callable[..., Origin]) -> None:
    o = origin(close="client", response_bytes=7)
    post = b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"
    with connect(o.port) as c:
        c.sendall(post[:30])
        time.sleep(0.05)
        c.sendall(post[30:] + GET)  # the rest of the body and a pipelined request
        assert [body for _, body in read_responses(c, 2)] == [b"xxxxxx\n"] * 2
    s = o.stats()
    assert s["requests"] == 2 and s["bytes_in"] == len(post) + len(GET)
    assert [r[3] for r in read_access_records(o.log_path)] == [len(post), len(GET)]


def test_server_after_closes_after_idle(origin: Callable[..., Origin]) -> None:
    o = origin(close="server-after", close_after=0.5)
    with connect(o.port) as c:
        c.sendall(GET)
        read_http(c)
        time.sleep(0.25)
        c.sendall(GET)  # activity inside close_after: served, timer restarts
        read_http(c)
        t0 = time.monotonic()
        assert is_eof(c, 5.0)
        waited = time.monotonic() - t0
    assert 0.4 <= waited < 3.0
    s = o.stats()
    assert (s["responses"], s["closed_by_server"]) == (2, 1)


def test_response_delay(origin: Callable[..., Origin]) -> None:
    o = origin(response_delay=0.4)
    with connect(o.port) as c:
        t0 = time.monotonic()
        c.sendall(GET)
        read_http(c)
        assert 0.35 <= time.monotonic() - t0 < 3.0


def test_read_delay_and_read_rate(origin: Callable[..., Origin]) -> None:
    o = origin(read_delay=0.3, read_rate=20000, close="client")
    body = b"b" * 8000  # at 20000 B/s: ~0.4 s of reading after the 0.3 s delay
    with connect(o.port) as c:
        t0 = time.monotonic()
        c.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        read_http(c)
        assert 0.6 <= time.monotonic() - t0 < 5.0


# --------------------------------------------------------------------------- raw protocol


def test_raw_protocol(origin: Callable[..., Origin]) -> None:
    o = origin(protocol="raw", response_bytes=50, close="server")
    with connect(o.port) as c:
        c.sendall(b"hello\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        assert len(data) == 50 and data.endswith(b"\n")

    k = origin(protocol="raw", response_bytes=3, close="client")
    with connect(k.port) as c:
        c.sendall(b"one\ntwo\nthr")  # two complete requests and a partial one
        got = b""
        while len(got) < 6:
            got += c.recv(4096)
        assert got == b"xx\nxx\n"
        assert not is_eof(c, 0.2)
        c.shutdown(socket.SHUT_WR)  # EOF: the partial request is dropped, the server closes
        assert is_eof(c, 2.0)
    s = k.stats()
    assert (s["requests"], s["closed_by_client"]) == (2, 1)


# --------------------------------------------------------------------------- socket options


def test_linger_zero_resets(origin: Callable[..., Origin]) -> None:
    o = origin(close="server", linger_zero=True)
    with connect(o.port) as c:
        cport = c.getsockname()[1]
        c.sendall(GET)
        with pytest.raises(ConnectionResetError):
            while c.recv(65536):
                pass
    assert "TIME_WAIT" not in state_of(o.port, cport)
    # Also the close that follows the client's EOF is abortive.
    k = origin(close="client", linger_zero=True)
    with connect(k.port) as c:
        c.sendall(GET)
        read_http(c)
        c.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionResetError):
            while c.recv(65536):
                pass
    assert o.stats()["closed_by_server"] == 1
    assert k.stats()["closed_by_client"] == 1


def test_defer_accept_holds_silent_connection(origin: Callable[..., Origin]) -> None:
    o = origin(defer_accept=5)
    with connect(o.port) as c:
        cport = c.getsockname()[1]
        time.sleep(0.3)
        # The kernel ignored the handshake's last ACK: the origin's side is still SYN_RECV.
        assert state_of(o.port, cport) == {"SYN_RECV"}
        c.sendall(GET)
        read_http(c)
    control = origin()
    with connect(control.port) as c:
        cport = c.getsockname()[1]
        assert wait_for(lambda: state_of(control.port, cport) == {"ESTABLISHED"}, 2.0)


@needs_ss
def test_keepalive_timer_and_rcvbuf(origin: Callable[..., Origin]) -> None:
    o = origin(close="client", keepalive={"enabled": True, "idle": 30}, rcvbuf=4096)
    plain = origin(close="client")
    with connect(o.port) as c, connect(plain.port) as p:
        for s in (c, p):
            s.sendall(GET)
            read_http(s)
        est = ss(o.port, "-o", "-m", "state", "established")
        assert "timer:(keepalive," in est
        assert "rb8192" in est  # the kernel doubles SO_RCVBUF; inherited from the listener
        assert "keepalive" not in ss(plain.port, "-o", "state", "established")


# --------------------------------------------------------------------------- stats, log, processes


def test_stats_and_access_log_match_clients(origin: Callable[..., Origin]) -> None:
    o = origin(workers=2, response_bytes=64)
    peers = set()
    n = 40
    for _ in range(n):
        with connect(o.port) as c:
            peers.add((HOST, c.getsockname()[1]))
            c.sendall(GET)
            read_http(c)
            assert is_eof(c, 2.0)
    s = o.stats()
    assert s["workers"] == 2
    assert s["accepted"] == s["requests"] == s["responses"] == s["closed_by_server"] == n
    assert s["bytes_in"] == n * len(GET)
    assert s["bytes_out"] == n * len(origin_mod._http_response(64, True))
    ends = ("closed_by_server", "closed_by_client", "resets", "timeouts", "errors")
    assert s["accepted"] == sum(s[k] for k in (*ends, "closed_at_exit"))
    assert set(s) == {*COUNTERS, "workers"}
    log = read_access_log(o.log_path)
    assert len(log) == n and set(log) == peers


def test_open_connections_closed_at_exit(origin: Callable[..., Origin]) -> None:
    o = origin(close="client")
    with connect(o.port) as c:
        c.sendall(GET)
        read_http(c)
        with connect(o.port) as idle:
            assert wait_for(lambda: accepted(o.port, idle.getsockname()[1]), 2.0)
            s = o.stats()  # SIGTERM while both are open
            assert is_eof(c, 2.0)
    assert (s["accepted"], s["closed_at_exit"], s["responses"]) == (2, 2, 1)


def test_bad_request_counts_error(origin: Callable[..., Origin]) -> None:
    o = origin(protocol="raw")
    with connect(o.port) as c:
        with contextlib.suppress(BlockingIOError):
            c.sendall(b"x" * (origin_mod.MAX_HEAD + 10))  # a line that never ends
        assert is_eof(c, 2.0)
    assert o.stats()["errors"] == 1


def test_workers_die_with_parent(tmp_path: Path) -> None:
    o = start_origin(tmp_path, {"workers": 2})
    try:
        assert wait_for(lambda: len(group_members(o.proc.pid)) == 3, 2.0)
        o.proc.kill()  # SIGKILL: no chance to forward anything; PDEATHSIG must do it
        o.proc.wait(5)
        assert wait_for(lambda: not group_members(o.proc.pid), 5.0)
    finally:
        kill_group(o.proc)
        if o.proc.stdout:
            o.proc.stdout.close()


def test_sigint_is_clean_too(origin: Callable[..., Origin]) -> None:
    o = origin()
    o.proc.send_signal(signal.SIGINT)
    assert o.proc.wait(10) == 0
    assert read_stats(o.stats_path)["accepted"] == 0


def test_connection_refused_after_stop(origin: Callable[..., Origin]) -> None:
    o = origin()
    assert o.stop() == 0
    with pytest.raises(OSError) as exc:
        connect(o.port, timeout=1.0)
    assert exc.value.errno == errno.ECONNREFUSED


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from chaos.lab import certs

    return certs.make(tmp_path_factory.mktemp("tls"), HOST)


def tls_origin(origin: Callable[..., Origin], files: Any, **config: Any) -> Origin:
    return origin(tls_cert=str(files.cert), tls_key=str(files.key), **config)


def tls_connect(port: int, files: Any) -> Any:
    """A TLS client that trusts the test CA and tells a close_notify (recv: b"") from a bare
    FIN (SSLEOFError)."""
    import ssl

    context = ssl.create_default_context(cafile=str(files.ca))
    return context.wrap_socket(connect(port), server_hostname=HOST, suppress_ragged_eofs=False)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"tls_cert": "/c.pem"}, "go together"),
        ({"tls_key": "/k.pem", "tls_cert": ""}, "tls_cert"),
        ({"tls_cert": "/c.pem", "tls_key": "/k.pem", "read_rate": 100}, "read_rate"),
    ],
)
def test_tls_config_rejects(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config(config)


def test_tls_close_server_sends_close_notify_then_fin(
    origin: Callable[..., Origin], tls_files: Any
) -> None:
    o = tls_origin(origin, tls_files, close="server", response_bytes=3000)
    overflows = tw_overflows()
    with tls_connect(o.port, tls_files) as c:
        cport = c.getsockname()[1]
        c.sendall(GET)
        headers, body = read_http(c)
        assert len(body) == 3000 and headers["connection"] == "close"
        assert c.recv(1) == b""  # a close_notify: a bare FIN would raise SSLEOFError
        assert c.version() in ("TLSv1.2", "TLSv1.3")
    s = o.stats()
    assert_time_wait(o.port, cport, overflows)  # the origin closed first, as without TLS
    assert (s["accepted"], s["requests"], s["responses"], s["closed_by_server"]) == (1, 1, 1, 1)


def test_tls_close_client_keeps_alive_until_the_clients_close_notify(
    origin: Callable[..., Origin], tls_files: Any
) -> None:
    o = tls_origin(origin, tls_files, close="client", read_delay=0.2)
    with tls_connect(o.port, tls_files) as c:
        for _ in range(3):
            c.sendall(GET)
            assert read_http(c)[0]["connection"] == "keep-alive"
        c.unwrap()  # our close_notify, then the origin's, before any FIN
    s = o.stats()
    assert (s["requests"], s["closed_by_client"], s["closed_by_server"]) == (3, 1, 0)


def test_tls_linger_zero_resets_without_close_notify(
    origin: Callable[..., Origin], tls_files: Any
) -> None:
    import ssl

    o = tls_origin(origin, tls_files, close="server", linger_zero=True)
    with tls_connect(o.port, tls_files) as c:
        cport = c.getsockname()[1]
        c.sendall(GET)
        # no close_notify (that would read as b""): the RST, which OpenSSL may report as EOF
        with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):
            while c.recv(65536):
                pass
    assert "TIME_WAIT" not in state_of(o.port, cport)
    assert o.stats()["closed_by_server"] == 1


def test_tls_connections_that_never_handshake(
    origin: Callable[..., Origin], tls_files: Any
) -> None:
    """A port probe is a client's close; plain HTTP to a TLS port is an error; neither is a
    request, and every accepted connection is counted once."""
    o = tls_origin(origin, tls_files)
    connect(o.port).close()
    with connect(o.port) as c:
        c.sendall(GET)
        reply = b""
        with contextlib.suppress(ConnectionResetError):  # the unread request makes it an RST
            while chunk := c.recv(65536):
                reply += chunk
        assert not reply.startswith(b"HTTP")  # at most OpenSSL's alert, never a response
    with tls_connect(o.port, tls_files) as c:  # still serving
        c.sendall(GET)
        read_http(c)
    s = o.stats()
    assert (s["accepted"], s["requests"]) == (3, 1)
    assert (s["closed_by_client"], s["errors"], s["closed_by_server"]) == (1, 1, 1)
    assert sum(s[k] for k in COUNTERS if k.startswith("closed") or k in (
        "resets", "timeouts", "errors")) == s["accepted"]
