"""The origin speaks TLS on the upstream leg (``lab.origin.tls``): the proxy's requests reach
it over TLS verified against the run's CA. Checked against what the proxy and the origin do
not compute together: the origin's own counters and access log, and tcpdump on the
proxy-origin leg (a ClientHello to the origin's port on every connection, never a plaintext
request). The control tells the proxy another CA: every request fails (502), the origin
serves none."""

from __future__ import annotations

import contextlib
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from fault_lab import tcpdump
from test_lab import requests_from_client

from chaos.lab import certs, lab
from chaos.lab.origin_log import read_access_log
from chaos.lab.topology import LabState
from chaos.record.rundir import RunDir
from chaos.scenario import loader

REQUESTS = 6
PAYLOAD = "((tcp[12] & 0xf0) >> 2)"  # offset of the TCP payload
#: tcpdump's own filters: a TLS handshake record carrying a ClientHello; a plaintext request
CLIENT_HELLO = f"tcp[{PAYLOAD}] = 0x16 and tcp[{PAYLOAD} + 5] = 0x01"
PLAIN_GET = f"tcp[{PAYLOAD}:4] = 0x47455420"

#: the user's own nginx.conf: the origin's CA through the placeholder, or another CA's path
USER_NGINX = """\
    events { worker_connections 256; }
    http {
        log_format main 'CONN $remote_addr:$remote_port - $upstream_addr $status $bytes_sent';
        access_log /dev/stdout main;
        server {
            listen {{ listen }};
            location / {
                proxy_pass https://{{ origin }};
                proxy_ssl_trusted_certificate CA_FILE;
                proxy_ssl_verify on;
                proxy_ssl_name origin;
                proxy_set_header Connection "close";
            }
        }
    }
    """


def scenario_file(
    tmp_path: Path, kind: str, config: Path | None = None, tls: bool = True
) -> Path:
    own = f", config: {config}" if config else ""
    path = tmp_path / "origin-tls.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: origin-tls
        lab:
          client: {{addresses: 2}}
          proxy: {{kind: {kind}{own}}}
          origin: {{tls: {str(tls).lower()}, access_log: true, workers: 1}}
        """)
    )
    return path


def upstream_capture(state: LabState, pcap: Path) -> contextlib.AbstractContextManager[None]:
    """The proxy-origin leg only: in the origin's namespace, on the origin's port."""
    return tcpdump(state.namespaces["origin"], pcap, int(state.origin["port"]))


def packets(pcap: Path, bpf: str) -> int:
    """How many packets of the capture tcpdump itself finds matching ``bpf``."""
    out = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap), bpf], capture_output=True, text=True, check=True
    ).stdout
    return len(out.splitlines())


def through_the_lab(tmp_path: Path, lab_name: str, scenario: Path) -> tuple[list[bytes], RunDir]:
    run = RunDir.create("origin-tls", tmp_path)
    state = lab.up(loader.load(str(scenario)), lab_name, run)
    try:
        with upstream_capture(state, tmp_path / "upstream.pcap"):
            replies = requests_from_client(state, REQUESTS)
    finally:
        lab.down(lab_name)  # the origin writes its counters as it stops
        run.close()
    return replies, run


def origin_counts(run: RunDir) -> tuple[dict[str, int], int]:
    stats = json.loads(run.files.origin_stats.read_text())
    return stats, len(read_access_log(run.path / "origin-access.log"))


@pytest.mark.parametrize(
    ("kind", "tls"), [("haproxy", True), ("nginx", True), ("caddy", True), ("haproxy", False)]
)
def test_the_proxy_speaks_tls_to_the_origin(kind, tls, tmp_path, lab_name):
    """With ``tls: false``, the control of the capture's filters: the same leg in plain TCP
    shows every request as a plaintext GET and no ClientHello."""
    scenario = scenario_file(tmp_path, kind, tls=tls)
    replies, run = through_the_lab(tmp_path, lab_name, scenario)
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    stats, logged = origin_counts(run)
    assert stats["requests"] == stats["responses"] == logged == REQUESTS
    pcap = tmp_path / "upstream.pcap"
    # upstream close: a connection (and so a full handshake) per request
    assert packets(pcap, CLIENT_HELLO) == (REQUESTS if tls else 0)
    assert packets(pcap, PLAIN_GET) == (0 if tls else REQUESTS)


@pytest.mark.parametrize("trusted", ["run CA", "another CA"])
def test_a_users_proxy_verifies_the_origin_with_the_run_ca(trusted, tmp_path, lab_name):
    if trusted == "run CA":
        ca_file = "{{ origin_ca }}"
    else:
        ca_file = str(certs.make(tmp_path / "other", "198.18.3.2", names=("origin",)).ca)
    config = tmp_path / "nginx.conf"
    config.write_text(textwrap.dedent(USER_NGINX).replace("CA_FILE", ca_file))
    replies, run = through_the_lab(tmp_path, lab_name, scenario_file(tmp_path, "nginx", config))
    stats, logged = origin_counts(run)
    pcap = tmp_path / "upstream.pcap"
    assert packets(pcap, CLIENT_HELLO) >= REQUESTS  # the proxy tried TLS every time
    assert packets(pcap, PLAIN_GET) == 0
    if trusted == "run CA":
        assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
        assert stats["requests"] == logged == REQUESTS
    else:
        # nginx refuses the origin's certificate: a 502 for each, and the origin served none
        assert all(reply.startswith(b"HTTP/1.1 502") for reply in replies), replies[0][:200]
        assert stats["requests"] == stats["responses"] == logged == 0
        assert stats["accepted"] >= REQUESTS
        log = (run.path / "logs" / "proxy.log").read_text()
        assert log.count("upstream SSL certificate verify error") >= REQUESTS
