"""Which TLS layer costs the raw user less CPU per connection: OpenSSL on the socket's fd
(``SSLContext._wrap_socket``, what ``locustfiles/_tls.py`` uses) or an ``SSLObject`` over two
MemoryBIOs (the user moves every record between the BIOs and the socket itself).

    sudo .venv/bin/python bench/tls_layer.py [--connections 2000] [--repeat 3]

Both run in one gevent process in the client namespace of a real lab whose HAProxy
terminates TLS (``lab.proxy.tls``), on non-blocking sockets that wait on gevent's hub only on
EAGAIN / want-read, as the raw user does: connect, full TLS 1.3 handshake, one HTTP request
with ``Connection: close``, read to the server's close_notify and FIN, close. Interleaved,
``--connections`` sequential connections per sample; printed: the process's CPU (user+sys)
per connection, medians. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chaos.kernel import netns  # noqa: E402
from chaos.lab import lab  # noqa: E402
from chaos.record.rundir import RunDir  # noqa: E402
from chaos.scenario import loader  # noqa: E402

# The client: a separate process (gevent's monkey-patching stays out of this one).
CLIENT = r"""
import gevent.monkey; gevent.monkey.patch_all()
import _socket, errno, json, os, socket, ssl, sys, time
from gevent.socket import wait_read, wait_write

host, ca, layer = sys.argv[1], sys.argv[3], sys.argv[4]
port, count = int(sys.argv[2]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

class Sock(_socket.socket):
    __slots__ = ("__weakref__",)

def connected():
    sock = Sock(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    if sock.connect_ex((host, port)) == errno.EINPROGRESS:
        wait_write(sock.fileno())
    return sock

def call(fd, method, *args):
    while True:
        try:
            return method(*args)
        except ssl.SSLWantReadError:
            wait_read(fd)
        except ssl.SSLWantWriteError:
            wait_write(fd)

def on_fd():
    sock = connected()
    fd = sock.fileno()
    tls = ctx._wrap_socket(sock, False, host)
    call(fd, tls.do_handshake)
    call(fd, tls.write, request)
    while True:
        try:
            if not call(fd, tls.read, 65536):
                break
        except ssl.SSLEOFError:
            break
    sock.close()

def with_bios():
    sock = connected()
    fd = sock.fileno()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)

    def flush():
        data = outgoing.read()
        while data:
            try:
                data = data[sock.send(data):]
            except BlockingIOError:
                wait_write(fd)

    def run(method, *args):
        while True:
            try:
                result = method(*args)
                flush()
                return result
            except ssl.SSLWantReadError:
                flush()
                while True:
                    try:
                        data = sock.recv(65536)
                        break
                    except BlockingIOError:
                        wait_read(fd)
                if not data:
                    incoming.write_eof()
                else:
                    incoming.write(data)

    run(tls.do_handshake)
    run(tls.write, request)
    while True:
        try:
            if not run(tls.read, 65536):
                break
        except ssl.SSLEOFError:
            break
    sock.close()

one = on_fd if layer == "fd" else with_bios
one()  # warm up
start = os.times()
for _ in range(count):
    one()
end = os.times()
cpu = (end.user - start.user) + (end.system - start.system)
print(json.dumps({"cpu_us_per_conn": cpu / count * 1e6}))
"""

WIDE = "{net.ipv4.ip_local_port_range: [1024, 65535]}"
SCENARIO = f"""\
name: tls-layer
lab:
  client: {{sysctls: {WIDE}}}
  proxy: {{kind: haproxy, mode: tcp, tls: true, sysctls: {WIDE}}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: the lab is built in network namespaces", file=sys.stderr)
        return 2
    results: dict[str, list[float]] = {"fd": [], "bio": []}
    with tempfile.TemporaryDirectory(prefix="tls-layer-") as tmpdir:
        scenario = loader.parse(textwrap.dedent(SCENARIO), "bench scenario")
        run = RunDir.create("tls-layer", Path(tmpdir))
        name = f"tl{os.getpid() % 10000}"
        try:
            state = lab.up(scenario, name, run)
            ca = f"{state.run_dir}/proxy/tls/ca.crt"
            host, port = str(state.proxy["host"]), str(state.proxy["port"])
            for _ in range(opts.repeat):
                for layer in results:
                    argv = [sys.executable, "-c", CLIENT, host, port, ca, layer]
                    proc = netns.popen(
                        state.namespaces["client"],
                        [*argv, str(opts.connections)],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    out, _ = proc.communicate(timeout=600)
                    cost = json.loads(out)["cpu_us_per_conn"]
                    results[layer].append(cost)
                    print(f"  {layer:<4} {cost:8.0f} us CPU per connection", file=sys.stderr)
        finally:
            lab.down(name)
            run.close()
    fd = sorted(results["fd"])[len(results["fd"]) // 2]
    bio = sorted(results["bio"])[len(results["bio"]) // 2]
    print(f"CPU per TLS connection (medians of {opts.repeat}, {opts.connections} connections each)")
    print(f"  OpenSSL on the fd (_wrap_socket):  {fd:8.0f} us")
    print(f"  SSLObject + MemoryBIO:             {bio:8.0f} us   ({bio / fd:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
