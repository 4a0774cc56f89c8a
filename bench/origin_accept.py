"""Can the origin accept new connections as fast as HAProxy can pass them on this machine?

Runs three wrk measurements on loopback, every request on a new connection
(``-H 'Connection: close'``):

1. ``origin_direct``: wrk -> origin (close=server, default workers);
2. ``haproxy_passing``: wrk -> HAProxy (mode http) -> nginx ``return 200`` (100-byte body),
   the fastest backend there is, so this is what HAProxy itself can pass;
3. ``haproxy_origin``: wrk -> HAProxy -> origin.

Prints new connections/s for each and ``origin_direct / haproxy_passing`` (>= 1 means the
origin is not the bottleneck of a lab). ``--tls``: the upstream leg speaks TLS (the origin's
``tls``, nginx ``listen ssl``, HAProxy ``server ... ssl verify required``, wrk ``https://``
straight to the origin), certificates from a CA made for the run, a full handshake on every
new connection but HAProxy's (it resumes its upstream sessions, as it does in a lab). Everything
it starts runs from a temp dir and is stopped and removed at exit::

    .venv/bin/python bench/origin_accept.py [--seconds 10] [--connections 50] [--tls] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from chaos.lab import certs

REPO = Path(__file__).resolve().parent.parent
BODY = "x" * 99 + "\n"  # 100 bytes, same size as the origin's default response
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def started(
    argv: Sequence[str], port: int, what: str, log: Path, sig: int = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        try:
            wait_port(port, proc, what)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its output:\n{log.read_text(errors='replace')}") from None
        yield proc
    finally:
        stop(proc, sig)


@contextlib.contextmanager
def origin(tmp: Path, config: dict[str, object]) -> Iterator[int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [
        sys.executable,
        "-m",
        "chaos.lab.origin",
        "--config-json",
        json.dumps(config),
        "--stats-file",
        str(tmp / "origin-stats.json"),
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"origin did not start (exit {proc.wait()})")
        yield int(line.split()[1])
    finally:
        stop(proc)


@contextlib.contextmanager
def nginx(tmp: Path, tls: certs.TlsFiles | None) -> Iterator[int]:
    port = free_port()
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen {HOST}:{port}{" ssl" if tls else ""} backlog=4096;
        {f"ssl_certificate {tls.cert}; ssl_certificate_key {tls.key};" if tls else ""}
        default_type text/plain;
        location / {{ return 200 "{BODY[:-1]}\\n"; }}
    }}
}}
"""
    )
    argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    # SIGQUIT: graceful stop that also takes the worker processes down.
    with started(argv, port, "nginx", tmp / "nginx.out", signal.SIGQUIT):
        yield port


@contextlib.contextmanager
def haproxy(
    tmp: Path, backend_port: int, name: str, tls: certs.TlsFiles | None
) -> Iterator[int]:
    port = free_port()
    conf = tmp / f"haproxy-{name}.cfg"
    upstream_tls = f" ssl verify required ca-file {tls.ca}" if tls else ""
    # http-server-close: one new upstream connection per request, which is what we measure.
    conf.write_text(
        f"""global
    maxconn 8000
defaults
    mode http
    option http-server-close
    http-reuse never
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {HOST}:{port}
    default_backend be
backend be
    server s1 {HOST}:{backend_port} maxconn 10000{upstream_tls}
"""
    )
    with started(["haproxy", "-f", str(conf), "-db"], port, "haproxy", tmp / f"haproxy-{name}.out"):
        yield port


def wrk(port: int, seconds: int, connections: int, scheme: str = "http") -> dict[str, float]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "-H",
        "Connection: close",
        f"{scheme}://{HOST}:{port}/",
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = 0
    for m_err in re.finditer(r"(?:connect|read|write|timeout) (\d+)", out):
        errors += int(m_err.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "conn_per_s": float(m.group(1)),
        "socket_errors": errors,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c")
    ap.add_argument("--tls", action="store_true", help="the upstream leg speaks TLS")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    for tool in ("wrk", "haproxy", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found in PATH", file=sys.stderr)
            return 2
    results: dict[str, dict[str, float]] = {}
    cfg: dict[str, object] = {"host": HOST, "port": 0, "close": "server"}
    with tempfile.TemporaryDirectory(prefix="origin-bench-") as d:
        tmp = Path(d)
        tls = certs.make(tmp / "tls", HOST) if args.tls else None
        if tls:
            cfg.update(tls_cert=str(tls.cert), tls_key=str(tls.key))
        with origin(tmp, cfg) as oport:
            scheme = "https" if tls else "http"
            results["origin_direct"] = wrk(oport, args.seconds, args.connections, scheme)
        time.sleep(1)  # let the previous run's sockets settle a little
        with nginx(tmp, tls) as nport, haproxy(tmp, nport, "nginx", tls) as hport:
            results["haproxy_passing"] = wrk(hport, args.seconds, args.connections)
        time.sleep(1)
        with origin(tmp, cfg) as oport, haproxy(tmp, oport, "origin", tls) as hport:
            results["haproxy_origin"] = wrk(hport, args.seconds, args.connections)

    for name, r in results.items():
        extra = ""
        if r["socket_errors"] or r["non_2xx"]:
            extra = f"  (socket errors {r['socket_errors']:.0f}, non-2xx {r['non_2xx']:.0f})"
        print(f"{name:16s} {r['conn_per_s']:10.0f} new connections/s{extra}")
    ratio = results["origin_direct"]["conn_per_s"] / results["haproxy_passing"]["conn_per_s"]
    behind = results["haproxy_origin"]["conn_per_s"] / results["haproxy_passing"]["conn_per_s"]
    print(f"ratio origin_direct / haproxy_passing = {ratio:.2f}")
    print(f"ratio haproxy_origin / haproxy_passing = {behind:.2f}")
    if args.json:
        print(json.dumps({"results": results, "ratio": ratio, "behind_haproxy_ratio": behind}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
