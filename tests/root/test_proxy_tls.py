"""The proxy terminates TLS with a certificate from a CA made for the run: every handshake a
real TLS client makes through HAProxy, nginx and Caddy completes against that CA (and only
that CA), and every request reaches the origin."""

from __future__ import annotations

import json
import socket
import ssl
import textwrap
from pathlib import Path

import pytest

from chaos.kernel import netns
from chaos.lab import lab, topology
from chaos.lab.origin_log import read_access_log
from chaos.load.series import read_series
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


def test_chaos_run_through_a_tls_proxy_reads_the_handshakes_from_the_series(
    tmp_path, chaos_cli, lab_name
):
    path = tmp_path / "tls.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: tls
        duration: 2
        lab: {proxy: {tls: true}}
        load: {users: 4, rate: 20, rate_mode: shared, workers: 1}
        expect:
          - {metric: load.tls_count, op: ">=", value: 5, agg: sum, label: handshakes}
          - {metric: load.failed, op: "==", value: 0, agg: sum, label: no-failures}
        """)
    )
    result = chaos_cli("run", str(path), "--name", lab_name, "--runs-dir", str(tmp_path / "r"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "r").iterdir()
    seconds = list(read_series(run_dir))
    handshakes = sum(s.summary("tls").count for s in seconds)
    completed = sum(s.completed for s in seconds)
    # every connection that completed shook hands (a user stopped at the end may have
    # shaken hands without completing)
    assert completed >= 20 and completed <= handshakes <= completed + 4
    summary = json.loads((run_dir / "summary.json").read_text())
    # the verdict read the tls phase from the series like any other
    assert [e["passed"] for e in summary["expectations"]] == [True, True], summary
    assert summary["expectations"][0]["observed"] >= 5
    assert "TLS handshake p99" in (run_dir / "report.html").read_text()  # plotted
    assert not topology.orphan_namespaces(lab_name)
