"""docker-compose.yml without a container engine: every service's command (as
`docker-compose config` renders it from .env.example) runs as its own process, in a network
namespace of its own (or in its owner's, for `network_mode: service:X`), with the service
names resolving through /etc/netns/NS/hosts (`ip netns exec` mounts it over /etc/hosts, as
compose's DNS would answer). victoria-metrics stands in for InfluxDB (it speaks the v2 write
API); Grafana is not run (tests/unit/test_deploy.py checks its dashboard).

The controller must find the proxy, both agents, InfluxDB and two Locust workers, run the
scenario with both faults applied and reverted through the agents, and every role's samples
must arrive in the sink. Addresses: 198.19.77.0/24 on a bridge in a namespace of the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from deploy_checks import REPO, compose_config, dashboard_queries, query_refs
from session_token import TOKEN
from vmetrics import BINARY as VM_BINARY

VENV_BIN = Path(sys.executable).parent
SUBNET = "198.19.77"
DURATION = 16  # seconds of load; the scenario's faults sit at 5-10 s and 12-15 s
ENV = {"CHAOS_DURATION": f"{DURATION}s", "COLLECT_INTERVAL": "1s"}
#: services with a network of their own, in start order, and their address
OWNERS = {"influxdb": 2, "origin": 3, "proxy": 4, "controller": 5, "worker": 6}
WORKERS = 2
#: dashboard fields that exist only in some states (documented as "absent when ...")
CONDITIONAL = {
    ("tcp_zombies", "oldest_idle_s"),
    ("tcp_teardown", "close_wait_oldest_s"),
    ("tcp_teardown", "fin_wait1_oldest_s"),
    ("port_budget_summary", "min_seconds_left"),
    ("load_failures", "count"),
}


@dataclass
class Stack:
    prefix: str
    app: Path
    procs: dict[str, subprocess.Popen]
    logs: Path

    def ns(self, owner: str) -> str:
        return f"{self.prefix}-{owner}"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[str]:
    """A bridge in `<prefix>-net` and one namespace per owning service, linked to it."""
    prefix = f"cs-{TOKEN}"
    made: list[str] = []
    try:
        hub = f"{prefix}-net"
        sh("ip", "netns", "add", hub)
        made.append(hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{SUBNET}.{octet} {name}\n" for name, octet in OWNERS.items()
        )
        for name, octet in OWNERS.items():
            ns = f"{prefix}-{name}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            Path(f"/etc/netns/{ns}").mkdir(parents=True, exist_ok=True)
            Path(f"/etc/netns/{ns}/hosts").write_text(hosts)
            sh("ip", "-n", hub, "link", "add", f"v{octet}", "type", "veth", "peer", "name",
               "eth0", "netns", ns)  # fmt: skip
            sh("ip", "-n", hub, "link", "set", f"v{octet}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield prefix
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def argv_for(command: list[str]) -> list[str]:
    """The image's executables on this host: the venv's chaos, locust and python."""
    first = command[0]
    if first in ("chaos", "locust", "python"):
        return [str(VENV_BIN / first), *command[1:]]
    found = shutil.which(first) or shutil.which(first, path="/usr/sbin:/sbin")
    assert found, f"{first} is not installed"
    return [found, *command[1:]]


def start(stack: Stack, name: str, owner: str, argv: list[str], env: dict[str, str]) -> None:
    log = open(stack.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps its copy
    with log:
        stack.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", stack.ns(owner), *argv],  # execs: the pid is the service's
            cwd=stack.app,
            env={"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(stack.app)}
            | env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the service and its children stop together
        )


def stop_all(stack: Stack) -> None:
    """SIGTERM every service (agents revert, collectors flush), then SIGKILL stragglers."""
    for proc in reversed(list(stack.procs.values())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in stack.procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: forked origin workers too
        proc.wait(5)


def in_ns(stack: Stack, owner: str, code: str) -> str:
    """Python run inside a service's namespace (the stack is not reachable from the host)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", stack.ns(owner), sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def vm_get(stack: Stack, path: str) -> str:
    url = f"http://{SUBNET}.{OWNERS['influxdb']}:8086{path}"
    return in_ns(stack, "controller", f"import urllib.request as u; "
                 f"print(u.urlopen({url!r}, timeout=30).read().decode())")  # fmt: skip


def metric_names(stack: Stack) -> dict[str, set[str]]:
    """Every series in victoria-metrics: metric name (measurement_field) -> roles seen."""
    vm_get(stack, "/internal/force_flush")
    time.sleep(2)  # flushed points become searchable a moment later
    query = urllib.parse.urlencode({"match[]": '{__name__=~".+"}'})
    names: dict[str, set[str]] = {}
    for line in vm_get(stack, f"/api/v1/series?{query}").splitlines():
        for series in json.loads(line).get("data", []) if line.strip() else []:
            names.setdefault(series["__name__"], set()).add(series.get("role", ""))
    return names


def test_compose_services_find_each_other_and_a_scenario_completes(
    network: str, tmp_path: Path
) -> None:
    if not os.path.exists(VM_BINARY):
        pytest.fail(f"{VM_BINARY} is missing (Debian package victoria-metrics; scripts/setup)")
    os.environ.update(ENV)  # docker-compose config interpolates them over .env.example
    try:
        services = compose_config()["services"]
    finally:
        for key in ENV:
            os.environ.pop(key, None)
    app = tmp_path / "app"  # the image's /app: the repo's deploy/ and locustfiles/
    app.mkdir()
    for name in ("deploy", "locustfiles"):
        (app / name).symlink_to(REPO / name)
    stack = Stack(network, app, {}, tmp_path)
    t0 = time.monotonic()
    try:
        start(stack, "influxdb", "influxdb", [VM_BINARY, f"-storageDataPath={tmp_path}/vm",
              f"-httpListenAddr={SUBNET}.{OWNERS['influxdb']}:8086", "-loggerLevel=WARN"], {})
        for name in ("origin", "proxy", "haproxy", "proxy-agent", "origin-agent", "proxy-collector",
                     "origin-collector", "controller"):  # fmt: skip
            service = services[name]
            owner = service.get("network_mode", f"service:{name}").removeprefix("service:")
            env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
            argv = argv_for(service["command"])
            if name == "controller":
                # compose's DNS answers `worker` with one address per replica; the hosts file
                # here has one, so the count is given (tests/root/test_compose_engine.py
                # checks the DNS way on a real engine)
                argv += ["--workers", str(WORKERS)]
            start(stack, name, owner, argv, env)
        worker = services["worker"]
        for index in range(WORKERS):  # `--scale worker=2`: same command, same namespace
            start(stack, f"worker-{index}", "worker", argv_for(worker["command"]), {})
        controller = stack.procs["controller"]
        code = controller.wait(DURATION + 150)
        log = (tmp_path / "controller.log").read_text()
        assert code == 0, log[-4000:]
        elapsed = time.monotonic() - t0

        # it found the workers, the proxy, both agents and the sink, and ran both faults
        assert f"{WORKERS} worker(s) joined" in log
        run_dir = next((app / "runs").glob("*-compose"))
        summary = json.loads((run_dir / "summary.json").read_text())
        load = summary["load"]
        assert load["workers"] == WORKERS and load["total_requests"] > 500
        # the reset storm at the proxy's SYNs shows as failures by class
        assert load["failures_by_class"], load
        assert summary["sink"]["written"] > 0 and summary["sink"]["left_in_spool"] == 0
        events = [json.loads(line) for line in (run_dir / "journal.jsonl").open()]
        applied = [e for e in events if e["event"] == "fault.apply"]
        reverted = [e for e in events if e["event"] == "fault.revert"]
        assert len(applied) == 2 and len(reverted) == 2, [e["event"] for e in events]
        assert all(e["expectation"]["passed"] for e in [{"expectation": v} for v in
                   summary["expectations"]])  # fmt: skip

        # every role's samples are in the sink, and everything the dashboard asks for
        names = metric_names(stack)
        assert {"proxy", "origin"} <= names["tcp_states_time_wait"]
        assert "client" in names["load_completed"]
        assert "chaos_event_title" in names
        missing = []
        for query in dashboard_queries():
            (measurement,), fields = query_refs(query)
            missing += [
                f"{measurement}.{field}"
                for field in fields
                if f"{measurement}_{field}" not in names and (measurement, field) not in CONDITIONAL
            ]
        assert missing == []
        # the agents' faults left no table behind in the proxy's namespace
        tables = subprocess.run(["ip", "netns", "exec", stack.ns("proxy"), "nft", "list",
                                 "tables"], capture_output=True, text=True).stdout  # fmt: skip
        assert "chaos_" not in tables
        print(f"stack ran in {elapsed:.1f} s; {len(names)} series in the sink")
    finally:
        stop_all(stack)
    # the collectors flushed their own record on SIGTERM
    for role in ("proxy", "origin"):
        lines = (app / "state" / f"collect-{role}" / "samples.lp").read_text().splitlines()
        assert any(line.startswith("tcp_states,") and f"role={role}" in line for line in lines)
    assert yaml.safe_load((REPO / "deploy/scenarios/compose.yaml").read_text())["duration"]
