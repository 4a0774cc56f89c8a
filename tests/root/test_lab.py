"""The lab, for real: namespaces, veths, HAProxy/nginx and the origin, driven through the CLI."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from chaos.errors import LabError, SysctlError
from chaos.kernel import netns
from chaos.lab import lab, proxies, topology
from chaos.lab.origin_log import read_access_log
from chaos.lab.topology import LabState
from chaos.record.rundir import RunDir
from chaos.scenario import loader


def http_get(source: str, host: str, port: int) -> bytes:
    """One HTTP/1.1 request from a chosen source address; returns the whole response."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect((host, port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def requests_from_client(state: LabState, count: int) -> list[bytes]:
    host, port = str(state.proxy["host"]), int(state.proxy["port"])
    sources = state.client_addresses

    def burst() -> list[bytes]:
        return [http_get(sources[i % len(sources)], host, port) for i in range(count)]

    return netns.run_in(state.namespaces["client"], burst)


def logged(path: Path, count: int, timeout: float = 5.0) -> list[proxies.ProxyLogEntry]:
    """The proxy log's entries once it holds ``count`` (a tcp-mode session is logged when
    both of its sides have closed, a moment after the client saw its reply)."""
    deadline = time.monotonic() + timeout
    while len(entries := proxies.parse_log(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return entries


def start_host_haproxy(conf: Path, port: int) -> subprocess.Popen:
    """The user's own HAProxy on the host (an external proxy), once it listens on ``port``."""
    proc = subprocess.Popen(
        [proxies.HAProxy.executable(), "-db", "-f", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while f":{port} " not in subprocess.run(["ss", "-tlnH"], capture_output=True, text=True).stdout:
        assert proc.poll() is None and time.monotonic() < deadline, "the user's proxy failed"
        time.sleep(0.05)
    return proc


def scenario_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_lab_up_sends_real_requests_through_haproxy(lab_name, chaos_cli, tmp_path):
    runs = tmp_path / "runs"
    result = chaos_cli("lab", "up", "smoke", "--name", lab_name, "--runs-dir", str(runs))
    assert result.returncode == 0, result.stderr
    try:
        state = LabState.load(lab_name)
        assert state is not None
        assert set(state.namespaces) == {"client", "gateway", "proxy", "origin"}
        assert all(netns.exists(ns) for ns in state.namespaces.values())

        responses = requests_from_client(state, 40)
        assert all(r.startswith(b"HTTP/1.1 200") for r in responses)
        assert all(r.endswith(b"\n") and len(r.split(b"\r\n\r\n", 1)[1]) == 100 for r in responses)

        status = chaos_cli("lab", "status", lab_name)
        assert status.returncode == 0, status.stderr
        assert "198.18.2.2/24" in status.stdout and "ok" in status.stdout

        # `up` refuses a second lab of the same name and says how to fix it.
        again = chaos_cli("lab", "up", "smoke", "--name", lab_name, "--runs-dir", str(runs))
        assert again.returncode == LabError.exit_code
        assert "already exists" in again.stderr and f"chaos lab down {lab_name}" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        down = chaos_cli("lab", "down", lab_name)
    assert down.returncode == 0, down.stderr
    assert not any(ns.startswith(f"chaos-{lab_name}-") for ns in netns.list_namespaces())
    assert LabState.load(lab_name) is None
    for record in state.processes:
        assert not record.alive()

    # What the origin received is exactly what HAProxy passed: same backend 4-tuples.
    run_dir = Path(state.run_dir)
    proxy_log = proxies.parse_log(run_dir / "logs" / "proxy.log")
    origin_peers = sorted(read_access_log(run_dir / "origin-access.log"))
    haproxy_peers = sorted(e.backend_source for e in proxy_log if e.backend_source)
    assert len(proxy_log) == 40
    assert {e.client[0] for e in proxy_log} == set(state.client_addresses)
    assert origin_peers == haproxy_peers
    assert (run_dir / "scenario.yaml").exists() and (run_dir / "journal.jsonl").exists()

    # Down twice is harmless.
    second = chaos_cli("lab", "down", lab_name)
    assert second.returncode == 0 and "nothing to remove" in second.stdout


@pytest.mark.parametrize(
    ("kind", "mode", "protocol"),
    [
        ("nginx", "http", "http"),
        ("nginx", "tcp", "raw"),
        ("haproxy", "tcp", "raw"),
        ("caddy", "http", "http"),  # Caddy 2.6 has no TCP proxy without plugins
    ],
)
def test_proxy_kinds_and_modes(lab_name, tmp_path, kind, mode, protocol):
    path = scenario_file(
        tmp_path,
        f"""
        name: kinds
        lab:
          client: {{addresses: 2}}
          proxy: {{kind: {kind}, mode: {mode}}}
          origin: {{protocol: {protocol}, response_bytes: 300}}
    """,
    )
    scenario = loader.load(str(path))
    run = RunDir.create("kinds", tmp_path)
    state = lab.up(scenario, lab_name, run)
    try:
        host, port = str(state.proxy["host"]), int(state.proxy["port"])

        def exchange() -> bytes:
            if protocol == "http":
                return http_get(state.client_addresses[0], host, port)
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"GET\n")
                data = b""
                while len(data) < 300 and (chunk := sock.recv(4096)):
                    data += chunk
                return data

        reply = netns.run_in(state.namespaces["client"], exchange)
        assert len(reply.split(b"\r\n\r\n", 1)[-1]) == 300
        entries = logged(run.log("proxy"), 1)
        assert len(entries) >= 1 and entries[0].client[0] in state.client_addresses
    finally:
        lab.down(lab_name)
        run.close()
    assert not topology.orphan_namespaces(lab_name)


def test_scenario_sysctls_are_applied_per_namespace(lab_name, tmp_path):
    path = scenario_file(
        tmp_path,
        """
        name: sysctls
        lab:
          client:
            addresses: 1
            sysctls: {net.ipv4.ip_local_port_range: [40000, 40100], net.ipv4.tcp_tw_reuse: 1}
          origin:
            sysctls: {net.ipv4.tcp_fin_timeout: 7}
    """,
    )
    scenario = loader.load(str(path))
    host_fin_timeout = netns.sysctl_get(None, "net.ipv4.tcp_fin_timeout")
    run = RunDir.create("sysctls", tmp_path)
    state = lab.up(scenario, lab_name, run)
    try:
        client, origin = state.namespaces["client"], state.namespaces["origin"]
        assert netns.sysctl_get(client, "net.ipv4.ip_local_port_range").split() == [
            "40000",
            "40100",
        ]
        assert netns.sysctl_get(client, "net.ipv4.tcp_tw_reuse") == "1"
        assert netns.sysctl_get(origin, "net.ipv4.tcp_fin_timeout") == "7"
        assert netns.sysctl_get(None, "net.ipv4.tcp_fin_timeout") == host_fin_timeout
    finally:
        lab.down(lab_name)
        run.close()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("net.ipv4.tcp_no_such_knob", "unknown sysctl"),
        ("net.ipv4.tcp_available_congestion_control", "read-only"),
    ],
)
def test_bad_sysctls_fail_before_anything_is_built(lab_name, tmp_path, chaos_cli, key, message):
    path = scenario_file(
        tmp_path,
        f"""
        name: badsysctl
        lab:
          origin:
            sysctls: {{{key}: 1}}
    """,
    )
    result = chaos_cli(
        "lab", "up", str(path), "--name", lab_name, "--runs-dir", str(tmp_path / "runs")
    )
    assert result.returncode == SysctlError.exit_code
    assert message in result.stderr and key in result.stderr
    assert "Traceback" not in result.stderr
    assert not topology.orphan_namespaces(lab_name)
    assert not any(ns.startswith("chaos-") and lab_name in ns for ns in netns.list_namespaces())


def test_proxy_that_fails_to_start_shows_its_own_output(lab_name, tmp_path, chaos_cli):
    # A real haproxy that is given an extra, missing configuration file when it runs (the
    # generated one passes its check): its own error message must reach the user.
    real = proxies.HAProxy.executable()
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "haproxy"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -c "*) exec {real} "$@";; esac\n'
        f'exec {real} "$@" -f /nonexistent/chaos-test.cfg\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    env_path = f"{wrapper_dir}:{os.environ['PATH']}"
    os.environ["PATH"], old = env_path, os.environ["PATH"]
    try:
        result = chaos_cli(
            "lab", "up", "smoke", "--name", lab_name, "--runs-dir", str(tmp_path / "runs")
        )
    finally:
        os.environ["PATH"] = old
    assert result.returncode == LabError.exit_code, result.stderr
    assert "haproxy exited with status" in result.stderr
    assert "/nonexistent/chaos-test.cfg" in result.stderr
    assert "Traceback" not in result.stderr
    assert not topology.orphan_namespaces(lab_name)


def test_down_removes_a_half_built_lab_without_state(lab_name):
    # A crash between creating namespaces and writing state must still be recoverable.
    namespace = f"chaos-{lab_name}-client"
    netns.create(namespace)
    assert lab_name in topology.list_labs()
    removed = lab.down(lab_name)
    assert f"namespace {namespace}" in removed
    assert not netns.exists(namespace)
    assert lab.down(lab_name) == []


def test_external_proxy_gets_client_and_origin_sides_only(lab_name, tmp_path):
    # The user's own proxy: a real HAProxy on the host, bound with IP_TRANSPARENT to the host side
    # of the client link before the lab exists, forwarding to the lab's origin.
    port = 18080
    conf = tmp_path / "user-haproxy.cfg"
    conf.write_text(
        textwrap.dedent(f"""\
        defaults
            mode tcp
            timeout connect 5s
            timeout client 10s
            timeout server 10s
        frontend fe
            bind 198.18.1.1:{port} transparent
            default_backend be
        backend be
            server origin 198.18.3.2:8080
        """)
    )
    user_proxy = start_host_haproxy(conf, port)
    path = scenario_file(
        tmp_path,
        f"""
        name: external
        lab:
          client: {{addresses: 2}}
          proxy: {{kind: external, address: "198.18.1.1:{port}"}}
    """,
    )
    run = RunDir.create("external", tmp_path)
    try:
        state = lab.up(loader.load(str(path)), lab_name, run)
        assert set(state.namespaces) == {"client", "origin"}
        assert len(state.host_links) == 2
        reply = requests_from_client(state, 3)
        assert all(r.startswith(b"HTTP/1.1 200") for r in reply)
        assert [p.role for p in state.processes] == ["origin"]
    finally:
        user_proxy.terminate()
        user_proxy.wait()
        lab.down(lab_name)
        run.close()
    assert not [link for link in os.listdir("/sys/class/net") if link.startswith(lab_name)]


def test_external_proxy_that_does_not_answer_is_a_clear_error(lab_name, tmp_path, chaos_cli):
    path = scenario_file(
        tmp_path,
        """
        name: external
        lab:
          proxy: {kind: external, address: "198.18.1.1:18081"}
    """,
    )
    result = chaos_cli(
        "lab", "up", str(path), "--name", lab_name, "--runs-dir", str(tmp_path / "runs")
    )
    assert result.returncode == LabError.exit_code
    assert "does not answer" in result.stderr and "198.18.3.2:8080" in result.stderr
    assert not topology.orphan_namespaces(lab_name)
