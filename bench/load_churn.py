"""New connections per second of one load process: RawTcpUser vs FastHttpUser vs wrk.

    .venv/bin/python bench/load_churn.py [--seconds 5] [--repeat 2] [--users 50] [--no-haproxy]
                                          [--phase-stats 1,0] [--profile]

Each tool opens one connection per request (``Connection: close``; RawTcpUser speaks the http
protocol with ``--teardown wait-server-fin``, so the server closes first for all three) against
the lab origin (``python -m chaos.lab.origin``, one worker, http, close=server), straight and
through an HAProxy (mode tcp, one thread) started with a generated config in a temp dir.

Everything runs on loopback in the current namespace (127.0.0.1), so client, proxy and server
share the machine's cores: numbers are sizes, not exact figures. Targets: raw >= 2.5x
FastHttpUser and >= 0.30x wrk. ``--profile`` runs the raw user once more under cProfile and
prints where its time goes. Locust is not imported here: every tool is a subprocess.

Measured here (2 vCPU VM, loopback, 5 s x 3, medians; the machine was shared):

    straight to the origin        wrk 18.5k/s  FastHttpUser 4.1k/s
      raw --phase-stats 1 (default)  10.9k/s   2.67x FastHttpUser   0.59x wrk
      raw --phase-stats 0            12.8k/s   3.14x FastHttpUser   0.69x wrk
    through HAProxy               wrk 12.2k/s  FastHttpUser 3.6k/s
      raw --phase-stats 1             7.7k/s   2.16x FastHttpUser   0.63x wrk
      raw --phase-stats 0             8.3k/s   2.32x FastHttpUser   0.68x wrk

Through HAProxy the client, HAProxy and the origin share the two cores, so every client
cycle is taken from the proxy and the origin: the raw user's lead over FastHttpUser shrinks.
Measure with the proxy on its own machine or namespace with pinned CPUs for the real ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
LOCUST = str(Path(PY).with_name("locust"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def origin() -> Iterator[int]:
    cfg = {"host": "127.0.0.1", "port": 0, "protocol": "http", "close": "server", "workers": 1}
    argv = [PY, "-m", "chaos.lab.origin", "--config-json", json.dumps(cfg)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"origin did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        stop(proc)


HAPROXY_CFG = """\
global
    maxconn 8000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server origin 127.0.0.1:{origin_port}
"""


@contextlib.contextmanager
def haproxy(origin_port: int, tmp: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp / "haproxy.cfg"
    conf.write_text(HAPROXY_CFG.format(port=port, origin_port=origin_port))
    log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["haproxy", "-f", str(conf), "-db"], stdout=log, stderr=log)
    try:
        wait_port(port)
        yield port
    finally:
        stop(proc)
        log.close()


def run_wrk(port: int, seconds: int) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c50",
            f"-d{seconds}s",
            "-H",
            "Connection: close",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


def run_locust(args: list[str], seconds: int, users: int, tmp: Path, entry: str) -> float:
    prefix = tmp / f"l{time.monotonic_ns()}"
    argv = [LOCUST, *args, "--headless", "--only-summary", "-u", str(users), "-r", str(users)]
    argv += ["-t", f"{seconds}s", "--csv", str(prefix), "--exit-code-on-error", "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"locust failed:\n{proc.stderr[-2000:]}")
    with open(f"{prefix}_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == entry:
                if int(row["Failure Count"]):
                    print(f"  note: {row['Failure Count']} failures in {entry}", file=sys.stderr)
                return float(row["Requests/s"])
    raise RuntimeError(f"no {entry!r} row in {prefix}_stats.csv")


def raw_args(port: int, phase_stats: str) -> list[str]:
    return [
        "-f", str(REPO / "locustfiles" / "raw_tcp.py"),
        "--host", f"tcp://127.0.0.1:{port}",
        "--protocol", "http", "--teardown", "wait-server-fin", "--phase-stats", phase_stats,
    ]  # fmt: skip


def fast_args(port: int) -> list[str]:
    return [
        "-f", str(REPO / "locustfiles" / "http_user.py"),
        "--host", f"http://127.0.0.1:{port}",
    ]  # fmt: skip


@contextlib.contextmanager
def target(through_haproxy: bool, tmp: Path) -> Iterator[int]:
    """A fresh origin (and HAProxy) per measurement, on new ports: the server closes first, so
    every run leaves tens of thousands of TIME_WAIT sockets on the server side; a SYN that
    lands on one of them (same 4-tuple, reused client port) can cost a 1 s retransmission,
    which made later runs on the same port measure the previous runs' debris."""
    with origin() as origin_port:
        if not through_haproxy:
            yield origin_port
            return
        with haproxy(origin_port, tmp) as proxy_port:
            yield proxy_port


def measure(through_haproxy: bool, opts: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Median of --repeat runs per tool, the tools interleaved so drift hits all alike."""
    samples: dict[str, list[float]] = {}

    def sample(name: str, run: Callable[[int], float]) -> None:
        with target(through_haproxy, tmp) as port:
            samples.setdefault(name, []).append(run(port))

    for _ in range(opts.repeat):
        sample("wrk", lambda port: run_wrk(port, opts.seconds))
        sample(
            "FastHttpUser",
            lambda port: run_locust(fast_args(port), opts.seconds, opts.users, tmp, "connection"),
        )
        for ps in opts.phase_stats.split(","):
            sample(
                f"raw (phase-stats {ps})",
                lambda port, ps=ps: run_locust(
                    raw_args(port, ps), opts.seconds, opts.users, tmp, "connection"
                ),
            )
    return {name: statistics.median(values) for name, values in samples.items()}


def report(where: str, rates: dict[str, float]) -> None:
    fast, wrk = rates["FastHttpUser"], rates["wrk"]
    print(f"\n{where}  (new connections/s, one client process)")
    for name, rate in rates.items():
        line = f"  {name:<24} {rate:>9,.0f}"
        if name.startswith("raw"):
            ok_fast = "ok" if rate >= 2.5 * fast else "BELOW 2.5x"
            ok_wrk = "ok" if rate >= 0.30 * wrk else "BELOW 0.30x"
            line += f"   {rate / fast:4.2f}x FastHttpUser ({ok_fast})"
            line += f"   {rate / wrk:4.2f}x wrk ({ok_wrk})"
        print(line)


def profile(port: int, opts: argparse.Namespace, tmp: Path) -> None:
    out = tmp / "raw.prof"
    argv = [PY, "-m", "cProfile", "-o", str(out), LOCUST, *raw_args(port, "1")]
    argv += ["--headless", "--only-summary", "-u", str(opts.users), "-r", str(opts.users)]
    argv += ["-t", f"{opts.seconds}s", "--exit-code-on-error", "0"]
    subprocess.run(argv, capture_output=True, timeout=opts.seconds + 60, check=True, cwd=REPO)
    import pstats

    print("\nRawTcpUser under cProfile (tottime; the profiler itself inflates Python calls):")
    pstats.Stats(str(out)).sort_stats("tottime").print_stats(18)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--phase-stats", default="1,0", help="RawTcpUser --phase-stats values")
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--profile", action="store_true")
    opts = ap.parse_args()
    for tool in ("wrk", "haproxy"):
        if tool == "haproxy" and opts.no_haproxy:
            continue
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    print(f"loopback, {os.cpu_count()} CPUs, {opts.seconds}s x {opts.repeat} per tool")
    with tempfile.TemporaryDirectory(prefix="load-churn-") as tmpdir:
        tmp = Path(tmpdir)
        report("straight to the origin", measure(False, opts, tmp))
        if not opts.no_haproxy:
            report("through HAProxy (mode tcp)", measure(True, opts, tmp))
        if opts.profile:
            with target(False, tmp) as port:
                profile(port, opts, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
