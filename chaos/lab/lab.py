"""A lab's life: ``up`` builds the topology and starts the origin and the proxy, ``down``
removes everything, ``status`` reports what exists and whether it answers."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from chaos.errors import LabError
from chaos.kernel import netns, processes
from chaos.kernel.proctree import CGROUP_ROOT, cgroup_pids, process_roots
from chaos.lab import certs, topology
from chaos.lab.proxies import PROXIES, Endpoints, proxy_for, proxy_tls_files
from chaos.lab.topology import LabState, Plan
from chaos.record.rundir import RunDir
from chaos.scenario.model import ProxySpec, Scenario


def origin_tls_files(run: RunDir) -> certs.TlsFiles:
    """The origin's certificate (``lab.origin.tls``), signed by the run's one CA, which is in
    the proxy's directory (where the proxy's certificate is, with ``lab.proxy.tls``)."""
    files = certs.files_in(run.path / "origin" / "tls")
    return replace(files, ca=proxy_tls_files(run.path / "proxy").ca)


def origin_argv(scenario: Scenario, run: RunDir) -> list[str]:
    spec = scenario.lab.origin
    config = spec.server_config()
    if spec.tls:
        files = origin_tls_files(run)
        config.update(tls_cert=str(files.cert), tls_key=str(files.key))
    argv = [
        sys.executable,
        "-m",
        "chaos.lab.origin",
        "--config-json",
        json.dumps(config),
        "--stats-file",
        str(run.files.origin_stats),
    ]
    if spec.access_log:
        argv += ["--access-log", str(run.path / "origin-access.log")]
        argv += ["--access-log-cap", str(scenario.lab.log_cap)]
    return argv


def endpoints(plan: Plan, scenario: Scenario) -> Endpoints:
    return Endpoints(
        plan.proxy_address,
        plan.proxy_port,
        plan.origin_address,
        scenario.lab.origin.port,
        origin_tls=scenario.lab.origin.tls,
    )


def preflight(scenario: Scenario, name: str) -> Plan:
    """Everything that can be checked before anything is built."""
    topology.require_root()
    plan = Plan(name, scenario.lab)
    if LabState.load(name) is not None or topology.orphan_namespaces(name):
        raise LabError(
            f"a lab named {name!r} already exists",
            f"remove it with `chaos lab down {name}`, or choose another name with --name",
        )
    if scenario.lab.proxy.kind in PROXIES:
        proxy = proxy_for(scenario.lab.proxy, endpoints(plan, scenario), Path("."))
        proxy.executable()
        proxy.check_fd_limit()
        for note in proxy.check_user_config():  # the proxy's own check runs in its namespace
            print(f"note: {note}", file=sys.stderr)
    topology.check_sysctls(plan)
    return plan


def up(scenario: Scenario, name: str, run: RunDir, tied: bool = False) -> LabState:
    """Build the lab and start its processes; on any failure, remove what was made.

    ``tied``: the lab's processes die with this process (``chaos run``); else they outlive
    it (``chaos lab up``)."""
    plan = preflight(scenario, name)
    state = LabState(
        name=name,
        owner=asdict(processes.Owner.current()),
        namespaces=plan.namespaces,
        run_dir=str(run.path),
        client_addresses=plan.client_addresses,
        target={"host": plan.client_target[0], "port": plan.client_target[1]},
        proxy={
            "kind": scenario.lab.proxy.kind,
            "mode": scenario.lab.proxy.mode,
            "host": plan.proxy_address,
            "port": plan.proxy_port,
        },
        origin={
            "host": plan.origin_address,
            "port": scenario.lab.origin.port,
            "protocol": scenario.lab.origin.protocol,
        },
    )
    run.journal.event("lab.up.begin", lab=name, namespaces=plan.namespaces)
    try:
        topology.build(plan, state)
        run.journal.event("lab.topology.built", lab=name)
        origin_ns = plan.namespace("origin")
        if scenario.lab.origin.tls:
            files = origin_tls_files(run)
            # DNS name "origin": nginx checks the name it proxies to (its upstream's), not an IP
            certs.make(files.cert.parent, plan.origin_address, files.ca.parent, ("origin",))
        proc, record = processes.spawn(
            "origin", "origin", origin_ns, origin_argv(scenario, run), run.log("origin"),
            tied=tied,
        )
        state.processes.append(record)
        state.save()
        processes.wait_listening(proc, record, plan.origin_address, scenario.lab.origin.port)
        run.journal.event("process.started", role="origin", pid=record.pid)
        if plan.external:
            _check_external(plan, scenario)
            state.proxy.update(external_proxy(scenario.lab.proxy))
            state.save()
            run.journal.event("proxy.external", **state.proxy)
        else:
            proxy = proxy_for(scenario.lab.proxy, endpoints(plan, scenario), run.path / "proxy")
            for note in proxy.check_user_config():
                run.journal.event("proxy.note", note=note)
            proc, record = proxy.start(
                plan.namespace("proxy"), run.log("proxy"), tied=tied, log_cap=scenario.lab.log_cap
            )
            state.processes.append(record)
            state.save()
            run.journal.event(
                "process.started",
                role="proxy",
                kind=proxy.kind,
                pid=record.pid,
                config=scenario.lab.proxy.config or "generated",
            )
    except BaseException as exc:
        run.journal.event("lab.up.failed", lab=name, error=str(exc))
        topology.destroy(name)
        raise
    run.journal.event("lab.up.done", lab=name)
    return state


def _check_external(plan: Plan, scenario: Scenario) -> None:
    result = topology.tcp_probe(plan.namespace("client"), plan.proxy_address, plan.proxy_port)
    if result != "ok":
        raise LabError(
            f"the external proxy at {plan.proxy_address}:{plan.proxy_port} does not answer "
            f"from the client namespace ({result})",
            f"start your proxy listening on {plan.proxy_address}:{plan.proxy_port} (the host "
            f"side of the client link is 198.18.1.1) and forwarding to the origin at "
            f"{plan.origin_address}:{scenario.lab.origin.port}",
        )


def external_proxy(spec: ProxySpec) -> dict[str, object]:
    """Where the user's own proxy is measured: ``pid`` (the root of its process tree) or
    ``cgroup`` for its CPU and memory, ``netns`` for its sockets. A name that does not
    resolve now is an error before the run, not an empty graph after it."""
    found: dict[str, object] = {}
    selector = spec.process
    if selector is not None and selector.pid is not None:
        if processes.start_time(selector.pid) is None:
            raise LabError(
                f"lab.proxy.process.pid {selector.pid}: no such process",
                "give the pid of your proxy's main process (e.g. `pgrep -o haproxy`)",
            )
        found["pid"] = selector.pid
    elif selector is not None and selector.name is not None:
        roots = process_roots(selector.name)
        if len(roots) != 1:
            raise LabError(
                f"lab.proxy.process.name {selector.name!r} matches "
                f"{len(roots) or 'no'} process tree{'s' if len(roots) != 1 else ''}"
                + (f" (pids {', '.join(map(str, roots))})" if roots else ""),
                "give lab.proxy.process.pid (or a cgroup) of the one you test",
            )
        found["pid"] = roots[0]
    elif selector is not None and selector.cgroup is not None:
        if not cgroup_pids(selector.cgroup):
            raise LabError(
                f"lab.proxy.process.cgroup {selector.cgroup!r} holds no process "
                f"(looked in {CGROUP_ROOT})",
                "give a cgroup v2 path from `systemctl status` or /proc/PID/cgroup",
            )
        found["cgroup"] = selector.cgroup
    if spec.netns is not None:
        if not netns.exists(spec.netns):
            raise LabError(
                f"lab.proxy.netns {spec.netns!r} does not exist",
                "check the name with `ip netns list`",
            )
        found["netns"] = spec.netns
    return found


def down(name: str) -> list[str]:
    topology.require_root()
    return topology.destroy(name)


@dataclass(frozen=True)
class Health:
    role: str
    name: str
    pid: int | None
    alive: bool
    probe: str


def health(state: LabState) -> list[Health]:
    """Is each process alive, and does its service answer from where its clients are?"""
    out = []
    for record in state.processes:
        if record.role == "proxy":
            target = state.target or state.proxy
            probe_from, host, port = state.namespaces["client"], target["host"], target["port"]
        elif record.role == "origin":
            probe_from, host, port = record.namespace, state.origin["host"], state.origin["port"]
        else:
            out.append(Health(record.role, record.name, record.pid, record.alive(), "-"))
            continue
        alive = record.alive()
        probe = topology.tcp_probe(probe_from, str(host), int(port)) if alive else "down"
        out.append(Health(record.role, record.name, record.pid, alive, probe))
    return out
