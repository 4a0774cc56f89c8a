"""The docker compose stack's files, checked without a container engine: the compose file
(Debian's docker-compose `config`), the Grafana dashboard (every query names measurements and
fields the collectors write), the HAProxy config (what chaos.lab.proxies renders), and the
remote scenario model. tests/root/test_compose_stack.py runs the services' commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_checks import (
    DASHBOARD,
    DEPLOY,
    REPO,
    SERVICES,
    check_query,
    compose_config,
    dashboard_queries,
    known_fields,
    query_refs,
)

from chaos.agent.service import Scope
from chaos.errors import FaultError, ScenarioError
from chaos.lab.proxies import Endpoints, HAProxy
from chaos.run import remote_faults
from chaos.scenario import loader
from chaos.scenario.model import ProxySpec


def test_compose_file_is_valid_and_complete() -> None:
    config = compose_config()
    services = config["services"]
    assert set(services) == SERVICES
    for role, owner in (("proxy", "haproxy"), ("origin", "origin")):
        for kind in ("agent", "collector"):
            service = services[f"{role}-{kind}"]
            assert service["network_mode"] == f"service:{owner}"
            assert service["pid"] == f"service:{owner}"
            assert service["cap_drop"] == ["ALL"]
            assert "NET_ADMIN" in service["cap_add"]
    # SYS_PTRACE/KILL only where a fault signals another user's processes
    assert set(services["proxy-agent"]["cap_add"]) == {"NET_ADMIN"}
    assert set(services["origin-agent"]["cap_add"]) == {"NET_ADMIN", "KILL", "SYS_PTRACE"}
    # the rest runs unprivileged
    for name in ("origin", "haproxy", "controller", "worker"):
        assert services[name]["user"] == "chaos"
        assert "cap_add" not in services[name]
    # `--scale worker=N` needs a worker without a fixed name or published port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    influx_env = services["influxdb"]["environment"]
    assert influx_env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert influx_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == (
        services["controller"]["environment"]["INFLUXDB_V2_TOKEN"]
    )


def test_compose_validation_catches_a_broken_file(tmp_path: Path) -> None:
    broken = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broken["services"]["worker"]["restart"] = {"not": "a string"}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    proc = subprocess.run(
        ["docker-compose", "-f", str(path), "config", "-q"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "restart" in proc.stderr


def test_compose_scenario_is_valid_and_remote() -> None:
    scenario = loader.load(str(DEPLOY / "scenarios" / "compose.yaml"))
    assert scenario.remote is not None
    targets = [spec.target for spec in remote_faults(scenario)]
    assert targets == ["http://haproxy:7700/proxy", "http://origin:7700/origin:chaos[.]lab[.]origin"]


def test_haproxy_config_is_what_the_lab_renders() -> None:
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    body = text[text.index("# HAProxy as chaos runs it") :]
    rendered = HAProxy(ProxySpec(), Endpoints("*", 8080, "origin", 8080), Path("/")).render()
    assert body == rendered


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_queries_reference_written_measurements_and_fields() -> None:
    known = known_fields()
    problems = [p for q in dashboard_queries() for p in check_query(q, known)]
    assert problems == []
    board = json.loads(DASHBOARD.read_text())
    used = {query_refs(q)[0][0] for q in dashboard_queries()}
    # what the dashboard promises: states, TIME_WAIT, port budget, zombies, conntrack, rate,
    # errors, and faults as annotations
    assert {"tcp_states", "port_budget_summary", "tcp_zombies", "conntrack", "load",
            "tcp_counters", "chaos_event"} <= used  # fmt: skip
    assert board["annotations"]["list"][0]["enable"] is True


def test_dashboard_check_rejects_unknown_names() -> None:
    known = known_fields()
    bad = 'filter(fn: (r) => r._measurement == "tcp_states") |> filter(fn: (r) => r._field == "x")'
    assert check_query(bad, known) == ["tcp_states.x is not written by the collectors"]
    assert check_query(bad.replace("tcp_states", "nope"), known) == ["unknown measurement 'nope'"]
    assert "tcp_states" in known and "time_wait" in known["tcp_states"]


# --- the remote scenario model and the agent's ROLE=PATH --------------------------------------


def load_text(tmp_path: Path, text: str) -> ScenarioError:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        loader.load(str(path))
    return info.value


BASE = "name: r\nremote: {target: 'proxy:8080', agents: {proxy: 'http://proxy:7700'}}\n"


def test_remote_model_is_strict(tmp_path: Path) -> None:
    err = load_text(tmp_path, BASE.replace("agents:", "agentz:"))
    assert "agentz" in err.message
    err = load_text(tmp_path, BASE + "faults: [{type: stop, target: origin, for: 1s}]\n")
    assert "add remote.agents.origin" in err.message
    err = load_text(tmp_path, BASE + "lab: {client: {addresses: 2}}\n")
    assert "remove the lab section" in err.message
    err = load_text(tmp_path, BASE.replace("proxy:8080", "proxy"))
    assert "HOST:PORT" in err.message
    expect = "expect: [{metric: tcp_states.time_wait, op: '>', value: 1}]\n"
    err = load_text(tmp_path, BASE + expect)
    assert "only load.* and load_failures.* metrics" in err.message


def test_agent_allow_role_path_is_checked() -> None:
    with pytest.raises(FaultError, match="ROLE=PATH"):
        Scope(["proxy=relative/path"], None)
    with pytest.raises(FaultError, match="does not exist"):
        Scope(["proxy=/nonexistent/ns/net"], None)
    scope = Scope(["proxy=/proc/self/ns/net"], None)
    assert scope.roles == {"proxy": "/proc/self/ns/net"}
