"""A user's proxy configuration: placeholders, what is refused before any lab exists, and
the generated configurations as examples (no root; the lab tests run the proxies)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from chaos.collect.process import ProcessCpu
from chaos.errors import ChaosError, LabError
from chaos.kernel.proctree import cgroup_pids, process_roots
from chaos.lab import lab
from chaos.lab.proxies import PROXIES, Endpoints, fill_placeholders, proxy_for
from chaos.scenario import loader
from chaos.scenario.model import ProxySpec

ENDPOINTS = Endpoints("198.18.2.2", 8080, "198.18.3.2", 8080)


def proxy_with(tmp_path: Path, kind: str, text: str):
    config = tmp_path / f"my-{kind}.conf"
    config.write_text(textwrap.dedent(text))
    return proxy_for(ProxySpec(kind=kind, config=str(config)), ENDPOINTS, tmp_path / "run")


def test_placeholders_are_filled_and_lines_kept(tmp_path):
    text = "a {{ listen }}\nb {{origin_host}}:{{ origin_port }}\nc {{ run_dir }}/x\n"
    filled = fill_placeholders(text, ENDPOINTS.placeholders(tmp_path), "f")
    assert filled == f"a 198.18.2.2:8080\nb 198.18.3.2:8080\nc {tmp_path}/x\n"


def test_unknown_placeholder_names_its_line(tmp_path):
    with pytest.raises(LabError) as err:
        text = "x\ny {{ listen }}\nz {{ upstream }}\n"
        fill_placeholders(text, ENDPOINTS.placeholders(tmp_path), "my.cfg")
    assert "my.cfg:3: {{ upstream }}" in str(err.value)
    assert "{{ origin }}" in (err.value.hint or "")


def test_user_config_must_leave_the_addresses_to_the_lab(tmp_path):
    proxy = proxy_with(tmp_path, "haproxy", "frontend f\n  bind 10.0.0.1:80\n")
    with pytest.raises(LabError) as err:
        proxy.check_user_config()
    assert "no {{ listen }} and no {{ origin }} placeholder" in str(err.value)
    assert "bind {{ listen }}" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("kind", "text", "noted"),
    [
        ("haproxy", "bind {{ listen }}\n server o {{ origin }}\n", True),
        ("haproxy", 'log-format "CONN %ci:%cp"\n bind {{ listen }}\n server o {{ origin }}', False),
        ("nginx", "listen {{ listen }}; proxy_pass http://{{ origin }};", True),
        (
            "nginx",
            "log_format m 'CONN $remote_addr'; listen {{ listen }}; proxy_pass {{ origin }};",
            False,
        ),
        ("caddy", "http://{{ listen }} {\n reverse_proxy {{ origin }}\n}\n", True),
        (
            "caddy",
            "http://{{ listen }} {\n log {\n output stdout\n }\n reverse_proxy {{ origin }}}",
            False,
        ),
    ],
)
def test_a_config_without_a_parseable_log_gets_a_note(tmp_path, kind, text, noted):
    notes = proxy_with(tmp_path, kind, text).check_user_config()
    assert bool(notes) == noted
    if noted:
        assert "no log line chaos can parse" in notes[0]
        assert "CPU and memory are still measured" in notes[0]


def test_config_refuses_the_knobs_it_replaces():
    with pytest.raises(ValidationError, match="your file sets what maxconn, threads would"):
        ProxySpec(kind="haproxy", config="x.cfg", maxconn=10, threads=2)
    with pytest.raises(ValidationError, match="config is for the lab's own proxy"):
        ProxySpec(kind="external", address="198.18.1.1:5", config="x.cfg")


def test_caddy_is_http_only():
    with pytest.raises(ValidationError, match=r"Caddy 2.6 .* proxies HTTP only"):
        ProxySpec(kind="caddy", mode="tcp")


def test_proxy_config_flag_tells_the_kind_and_drops_the_knobs(tmp_path):
    knobs = tmp_path / "knobs.yaml"
    knobs.write_text("name: k\nlab:\n  proxy: {maxconn: 100, threads: 2, port: 9000}\n")
    scenario = loader.load(str(knobs))
    for name, text, kind in [
        ("edge.cfg", "frontend fe\n bind {{ listen }}\n", "haproxy"),
        ("site.conf", "events {}\nhttp {\n}\n", "nginx"),
        ("Caddyfile", ":80 {\n reverse_proxy {{ origin }}\n}\n", "caddy"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        spec = loader.with_proxy_config(scenario, str(path)).lab.proxy
        assert (spec.kind, spec.config, spec.port) == (kind, str(path), 9000)
        assert spec.maxconn == ProxySpec().maxconn  # the file decides, not the scenario
    vague = tmp_path / "proxy.conf"
    vague.write_text("# nothing to go by\n")
    with pytest.raises(ChaosError, match="cannot tell whether it is for haproxy, nginx or caddy"):
        loader.with_proxy_config(scenario, str(vague))
    assert loader.with_proxy_config(scenario, str(vague), "nginx").lab.proxy.kind == "nginx"
    with pytest.raises(ChaosError, match="proxies HTTP only"):
        loader.with_proxy_config(loader.load("time-wait-storm"), str(tmp_path / "Caddyfile"))


def test_scenario_config_path_is_relative_to_the_scenario_file(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "haproxy.cfg").write_text("x")
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nlab:\n  proxy: {config: conf/haproxy.cfg}\n")
    assert loader.load(str(path)).lab.proxy.config == str(tmp_path / "conf" / "haproxy.cfg")


@pytest.mark.parametrize("kind", sorted(PROXIES))
def test_generated_config_is_a_user_config(tmp_path, kind):
    # The example `chaos lab proxy-config` prints is accepted back as a user's file, and
    # passes the proxy's own syntax check once filled (nginx's -t binds: checked in the lab).
    example = proxy_for(ProxySpec(kind=kind), ENDPOINTS, tmp_path).example()
    assert "{{ listen" in example and "{{ origin }}" in example
    user = proxy_with(tmp_path, kind, example)
    assert user.check_user_config() == []
    assert user.render() == proxy_for(ProxySpec(kind=kind), ENDPOINTS, user.conf_dir).render()
    if kind == "haproxy":
        conf = tmp_path / "h.cfg"
        conf.write_text(user.render())
        out = subprocess.run(user.check_argv(conf), capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


# --- an external proxy's processes --------------------------------------------------------


def test_external_process_is_one_of_pid_name_cgroup():
    with pytest.raises(ValidationError, match="exactly one of pid, name or cgroup"):
        ProxySpec(kind="external", address="198.18.1.1:80", process={"pid": 1, "name": "x"})
    with pytest.raises(ValidationError, match="process is only for kind: external"):
        ProxySpec(kind="haproxy", process={"pid": 1})


def test_external_proxy_resolves_pid_name_and_cgroup(tmp_path):
    exe = tmp_path / "chaosproxyx"  # a process name of this test's own
    exe.symlink_to("/bin/sleep")
    tree = subprocess.Popen(["/bin/sh", "-c", f"{exe} 30 & {exe} 30 & wait"])
    roots: list[int] = []
    try:
        deadline = time.monotonic() + 5
        while len(process_roots("chaosproxyx")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        roots = process_roots("chaosproxyx")
        assert len(roots) == 2  # two sleeps under sh: two trees of that name
        spec = {"kind": "external", "address": "198.18.1.1:80"}
        with pytest.raises(LabError, match="matches 2 process trees"):
            lab.external_proxy(ProxySpec(**spec, process={"name": "chaosproxyx"}))
        with pytest.raises(LabError, match="matches no process tree"):
            lab.external_proxy(ProxySpec(**spec, process={"name": "chaos-no-such"}))
        assert lab.external_proxy(ProxySpec(**spec, process={"pid": tree.pid})) == {
            "pid": tree.pid
        }
        # the pid's tree: sh and its two children, CPU and memory summed
        (point,) = ProcessCpu(tree.pid, netns="host").sample(time.time())
        assert point.fields["threads"] == 3
    finally:
        for pid in roots:
            os.kill(pid, signal.SIGKILL)
        tree.wait()
    own = next(
        line.removeprefix("0::")
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )
    assert os.getpid() in cgroup_pids(own)
    assert lab.external_proxy(ProxySpec(**spec, process={"cgroup": own})) == {"cgroup": own}
    (point,) = ProcessCpu(0, netns="host", cgroup=own).sample(time.time())
    assert point.tags["cgroup"] == own and point.fields["rss_bytes"] > 0
    with pytest.raises(LabError, match="holds no process"):
        lab.external_proxy(ProxySpec(**spec, process={"cgroup": "/chaos-no-such.slice"}))


@pytest.mark.parametrize(
    ("kind", "upstream_tls"),
    [
        ("haproxy", ["server origin 198.18.3.2:8080 ssl verify required ca-file {ca}"]),
        (
            "nginx",
            [
                "proxy_pass https://origin;",
                "proxy_ssl_trusted_certificate {ca};",
                "proxy_ssl_verify on;",
            ],
        ),
        ("caddy", ["tls_trusted_ca_certs {ca}"]),
    ],
)
def test_generated_configs_speak_tls_to_a_tls_origin(tmp_path, kind, upstream_tls):
    ca = tmp_path / "tls" / "ca.crt"  # the run's one CA, in the proxy's directory
    tls_origin = Endpoints("198.18.2.2", 8080, "198.18.3.2", 8080, origin_tls=True)
    text = proxy_for(ProxySpec(kind=kind), tls_origin, tmp_path).render()
    plain = proxy_for(ProxySpec(kind=kind), ENDPOINTS, tmp_path).render()
    for line in upstream_tls:
        assert line.format(ca=ca) in text
        assert line.format(ca=ca) not in plain
    assert str(ca) not in plain


def test_a_users_config_names_the_origins_ca(tmp_path):
    text = "bind {{ listen }}\nserver o {{ origin }} ssl ca-file {{ origin_ca }}\n"
    proxy = proxy_with(tmp_path, "haproxy", text)
    assert f"ssl ca-file {tmp_path}/run/tls/ca.crt\n" in proxy.render()
    assert proxy.needs_tls()  # the lab makes the CA the placeholder names
    # {{ origin_ca }} alone does not leave the upstream address to the lab
    alone = proxy_with(tmp_path, "haproxy", "bind {{ listen }}\nca-file {{ origin_ca }}\n")
    with pytest.raises(LabError, match=r"no \{\{ origin \}\} placeholder"):
        alone.check_user_config()
