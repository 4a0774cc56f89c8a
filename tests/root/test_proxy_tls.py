"""The proxy terminates TLS with a certificate from a CA made for the run: every handshake a
real TLS client makes through HAProxy, nginx and Caddy completes against that CA (and only
that CA), and every request reaches the origin."""

from __future__ import annotations

import socket
import ssl
import textwrap
from pathlib import Path

import pytest

from chaos.kernel import netns
from chaos.lab import lab, topology
from chaos.lab.origin import read_access_log
from chaos.record.rundir import RunDir
from chaos.scenario import loader

REQUESTS = 10


def https_get(context: ssl.SSLContext, source: str, host: str, port: int) -> tuple[bytes, str]:
    """One HTTPS request from ``source``; the response and the TLS version negotiated."""
    with socket.socket() as raw:
        raw.settimeout(5)
        raw.bind((source, 0))
        raw.connect((host, port))
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks), str(tls.version())


@pytest.mark.parametrize("kind", ["haproxy", "nginx", "caddy"])
def test_tls_through_the_proxy(kind, tmp_path, lab_name):
    path = tmp_path / "tls.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: tls
        lab:
          client: {{addresses: 2}}
          proxy: {{kind: {kind}, tls: true}}
          origin: {{access_log: true}}
        """)
    )
    run = RunDir.create("tls", tmp_path)
    state = lab.up(loader.load(str(path)), lab_name, run)
    try:
        ca = run.path / "proxy" / "tls" / "ca.crt"
        trusting = ssl.create_default_context(cafile=str(ca))
        host, port = str(state.proxy["host"]), int(state.proxy["port"])
        source = state.client_addresses[0]
        replies = netns.run_in(
            state.namespaces["client"],
            lambda: [https_get(trusting, source, host, port) for _ in range(REQUESTS)],
        )
        # a client that trusts only the system's CAs refuses the run's certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            netns.run_in(
                state.namespaces["client"],
                lambda: https_get(ssl.create_default_context(), source, host, port),
            )
    finally:
        lab.down(lab_name)
        run.close()
    assert len(replies) == REQUESTS  # every handshake completed
    for body, version in replies:
        assert body.startswith(b"HTTP/1.1 200") and version in ("TLSv1.2", "TLSv1.3")
    # the refused handshake never became a request: the origin saw exactly the good ones
    assert len(read_access_log(Path(run.path) / "origin-access.log")) == REQUESTS
    assert not topology.orphan_namespaces(lab_name)


def test_a_run_through_a_tls_proxy_is_refused_until_the_load_speaks_tls(
    tmp_path, chaos_cli, lab_name
):
    path = tmp_path / "tls.yaml"
    path.write_text("name: tls\nlab:\n  proxy: {tls: true}\n")
    result = chaos_cli("run", str(path), "--name", lab_name, "--runs-dir", str(tmp_path / "r"))
    assert result.returncode == 1 and "does not speak TLS yet" in result.stderr
    assert "fix:" in result.stderr and "Traceback" not in result.stderr
    assert not topology.orphan_namespaces(lab_name)
