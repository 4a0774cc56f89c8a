"""The docker compose stack's files, checked without a container engine: the compose file
(Debian's docker-compose `config`), the Grafana dashboard (every query names measurements and
fields the collectors write), the HAProxy config (what chaos.lab.proxies renders), and the
remote scenario model. tests/root/test_compose_stack.py runs the services' commands."""

from __future__ import annotations

import importlib.util
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
    documented_tags,
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
    for role, owner in (("proxy", "proxy"), ("origin", "origin")):
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
    for name in ("origin", "proxy", "haproxy", "controller", "worker"):
        assert services[name]["user"] == "chaos"
        assert "cap_add" not in services[name]
    # HAProxy joins the proxy's namespaces like its sidecars: its restart leaves them alone
    assert services["haproxy"]["network_mode"] == "service:proxy"
    assert services["haproxy"]["pid"] == "service:proxy"
    # whoever owns a PID namespace runs under an init: no program of ours is PID 1
    owners = [n for n, svc in services.items() if "pid" not in svc and n != "grafana"]
    assert sorted(n for n in owners if services[n].get("init")) == sorted(
        n for n in owners if services[n].get("image", "").startswith("chaos")
    )
    # published ports bind loopback unless BIND_ADDRESS opts in
    for name in ("influxdb", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    # `--scale worker=N` alone: the controller counts the workers, which start first
    assert "--workers" not in services["controller"]["command"]
    assert "worker" in services["controller"]["depends_on"]
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
    assert targets == [
        "http://proxy:7700/proxy",
        "http://origin:7700/origin:^\\S*python3? -m chaos[.]lab[.]origin",
    ]
    assert scenario.remote.workers_from == "worker"


def test_haproxy_config_is_what_the_lab_renders() -> None:
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    body = text[text.index("# HAProxy as chaos runs it") :]
    rendered = HAProxy(ProxySpec(), Endpoints("*", 8080, "origin", 8080), Path("/")).render()
    assert body == rendered


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_queries_reference_written_measurements_fields_and_tags() -> None:
    known, tags = known_fields(), documented_tags()
    problems = [p for q in dashboard_queries() for p in check_query(q, known, tags)]
    assert problems == []
    used = {query_refs(q)[0][0] for q in dashboard_queries()}
    # what the dashboard promises: states, TIME_WAIT, port budget, zombies, conntrack, the
    # load and its failures, kernel counters, and faults as annotations
    assert {"tcp_states", "port_budget_summary", "tcp_zombies", "conntrack", "load",
            "load_failures", "tcp_counters", "chaos_event"} <= used  # fmt: skip


def test_dashboard_is_what_a_grafana_user_expects() -> None:
    spec = importlib.util.spec_from_file_location("build", DEPLOY / "grafana/build_dashboard.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    board = json.loads(DASHBOARD.read_text())
    assert board == json.loads(builder.render()), "run deploy/grafana/build_dashboard.py"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"bucket", "run", "host", "role"}
    for name in ("run", "host", "role"):
        assert variables[name]["multi"] and variables[name]["includeAll"]
    for item in board["panels"]:
        assert item["fieldConfig"]["defaults"]["unit"], item["title"]
        for target in item["targets"]:
            q = target["query"]
            # the bucket from its variable, every bucket's length from Grafana's interval
            assert '"$bucket"."autogen".' in q and "GROUP BY time($__interval)" in q, q
            assert "mean(" not in q, q  # peaks and utilisation are never averaged away
            # counters: per-second rates that do not depend on the bucket's length
            if "sum(" in q:
                assert '/ sum("interval_s")' in q or "/ ($__interval_ms / 1000)" in q, q
    annotation = board["annotations"]["list"][0]
    assert annotation["enable"] and '"chaos_event"' in annotation["query"]
    # the datasource speaks InfluxQL to the bucket of .env, with the token
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text()
    )["datasources"][0]
    assert datasource["jsonData"]["version"] == "InfluxQL"
    assert datasource["jsonData"]["dbName"] == "$INFLUXDB_BUCKET"
    assert datasource["secureJsonData"]["httpHeaderValue1"] == "Token $INFLUXDB_TOKEN"


def test_dashboard_check_rejects_unknown_names() -> None:
    known, tags = known_fields(), documented_tags()
    bad = (
        'SELECT max("x") FROM "$bucket"."autogen"."tcp_states" WHERE $timeFilter '
        'AND "colour" = \'red\' GROUP BY time($__interval), "role"'
    )
    assert check_query(bad, known, tags) == [
        "tcp_states.x is not written by the collectors",
        "tcp_states has no tag 'colour'",
    ]
    assert check_query(bad.replace("tcp_states", "nope"), known, tags) == [
        "unknown measurement 'nope'"
    ]
    assert "tcp_states" in known and "time_wait" in known["tcp_states"]
    assert "family" in tags["tcp_states"]


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
