"""The user's own proxy configuration in the lab: hand-written haproxy.cfg, nginx.conf and
Caddyfile (written here, never generated), brought up with `chaos lab up --proxy-config`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_lab import http_get

from chaos.errors import LabError
from chaos.kernel import netns
from chaos.lab import topology
from chaos.lab.origin_log import read_access_log
from chaos.lab.topology import LabState

REQUESTS = 12

USER_CONFIGS = {
    # Each answers with a header the generated configs never set: proof that the user's file
    # is the one running.
    "haproxy.cfg": """\
        global
            log stdout format raw local0
        defaults
            mode http
            log global
            log-format "CONN %ci:%cp %bi:%bp %si:%sp %ST %B %ts %Tt"
            timeout connect 3s
            timeout client 20s
            timeout server 20s
            option http-server-close
        frontend my_site
            bind {{ listen }}
            http-response set-header X-User-Config haproxy
            default_backend my_app
        backend my_app
            server app1 {{ origin }} check inter 30s
        """,
    "nginx.conf": """\
        worker_processes 2;
        events { worker_connections 512; }
        http {
            log_format main 'CONN $remote_addr:$remote_port - $upstream_addr $status $bytes_sent';
            access_log /dev/stdout main;
            server {
                listen {{ listen }};
                add_header X-User-Config nginx always;
                location / {
                    proxy_pass http://{{ origin }};
                    proxy_set_header Connection "close";
                }
            }
        }
        """,
    "Caddyfile": """\
        {
            auto_https off
        }
        http://{{ listen }} {
            bind {{ listen_host }}
            log {
                output stdout
                format json
            }
            header X-User-Config caddy
            reverse_proxy {{ origin_host }}:{{ origin_port }}
        }
        """,
}

SCENARIO = """\
name: mine
lab:
  client: {addresses: 2}
  origin: {access_log: true}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("filename", sorted(USER_CONFIGS))
def test_users_own_config_carries_the_traffic(lab_name, tmp_path, chaos_cli, filename):
    config = write(tmp_path, filename, USER_CONFIGS[filename])
    scenario = write(tmp_path, "mine.yaml", SCENARIO)
    up = chaos_cli(
        "lab", "up", str(scenario), "--proxy-config", str(config), "--name", lab_name,
        "--runs-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "note:" not in up.stderr  # every file above logs a line chaos parses
    try:
        state = LabState.load(lab_name)
        assert state is not None
        host, port = str(state.proxy["host"]), int(state.proxy["port"])
        replies = netns.run_in(
            state.namespaces["client"],
            lambda: [http_get(state.client_addresses[0], host, port) for _ in range(REQUESTS)],
        )
    finally:
        down = chaos_cli("lab", "down", lab_name)
    assert down.returncode == 0, down.stderr
    kind = state.proxy["kind"]
    assert kind == {"haproxy.cfg": "haproxy", "nginx.conf": "nginx", "Caddyfile": "caddy"}[filename]
    for reply in replies:
        head = reply.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200"), reply[:200]
        assert f"x-user-config: {kind}".encode() in head
    # the origin (its own access log) saw every request, from the proxy's upstream address
    run_dir = Path(state.run_dir)
    origin_peers = read_access_log(run_dir / "origin-access.log")
    assert len(origin_peers) == REQUESTS
    assert {ip for ip, _ in origin_peers} == {"198.18.3.1"}
    # the file that ran is the user's, placeholders filled, line for line
    ran = (run_dir / "proxy" / filename).read_text().splitlines()
    assert len(ran) == len(config.read_text().splitlines())
    assert "{{" not in "\n".join(ran)


BROKEN = {
    # (file, the line of the mistake, what the proxy itself says about it)
    "haproxy.cfg": (
        "defaults\n  mode http\n  timeout client 5s\nfrontend fe\n  bind {{ listen }}\n"
        "  bogus_keyword 1\n  default_backend be\nbackend be\n  server o {{ origin }}\n",
        6,
        "unknown keyword 'bogus_keyword'",
    ),
    "nginx.conf": (
        "events {}\nhttp {\n  server {\n    listen {{ listen }};\n    bogus_directive on;\n"
        "    location / { proxy_pass http://{{ origin }}; }\n  }\n}\n",
        5,
        'unknown directive "bogus_directive"',
    ),
    "Caddyfile": (
        "http://{{ listen }} {\n  bind {{ listen_host }}\n  bogus_directive\n"
        "  reverse_proxy {{ origin }}\n}\n",
        3,
        "unrecognized directive: bogus_directive",
    ),
}


@pytest.mark.parametrize("filename", sorted(BROKEN))
def test_broken_user_config_is_refused_with_the_proxys_own_words(
    lab_name, tmp_path, chaos_cli, filename
):
    text, line, said = BROKEN[filename]
    config = tmp_path / filename
    config.write_text(text)
    result = chaos_cli(
        "run", "smoke", "--proxy-config", str(config), "--name", lab_name,
        "--runs-dir", str(tmp_path / "runs"), "--no-influx",
    )  # fmt: skip
    assert result.returncode == LabError.exit_code, result.stderr
    assert said in result.stderr
    assert f"{config}:{line}" in result.stderr or f"{config}:{line}]" in result.stderr
    assert "your configuration" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/locust/*"))
    assert not topology.orphan_namespaces(lab_name)
