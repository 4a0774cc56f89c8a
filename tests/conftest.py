"""Test-session guards.

``machine_stays_clean`` snapshots the host before the session and fails the run if anything
the tests made survives them: network namespaces, host links, host qdiscs, host nft tables,
stopped processes, or child processes of the test runner. Other labs and other test sessions
may live on the same host, so it counts only what is this session's: names carrying the
session token (``session_token.TOKEN``), processes that descend from this runner or carry its
token in their environment or command line. A Docker engine's leftovers count too (the
engine test names its directories with the token): its processes, overlay and nsfs mounts,
the files dockerd writes outside its own directories, forwarding sysctls, and the containers
and networks of a system engine.

Root tests (``tests/root``) need real namespaces. Without root they are skipped with a
visible reason, except under CI (``CI=true``), where a missing root is a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from session_token import ENV_VAR, TOKEN

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0
os.environ[ENV_VAR] = TOKEN


def _ours(name: str) -> bool:
    return TOKEN in name


def _namespaces() -> set[str]:
    try:
        return {name for name in os.listdir("/run/netns") if _ours(name)}
    except FileNotFoundError:
        return set()


def _host_links() -> set[str]:
    return {name for name in os.listdir("/sys/class/net") if _ours(name)}


def _host_qdiscs() -> set[str]:
    out = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if _ours(line) and " noqueue " not in line}


def _host_nft_tables() -> set[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not IS_ROOT or not os.path.exists(nft):
        return set()
    out = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if _ours(line)}


def _started_by_this_session(proc: psutil.Process) -> bool:
    """A descendant of this runner, or one that carries its token (a lab process whose
    controller was killed is reparented, but keeps its environment and command line)."""
    try:
        if any(parent.pid == os.getpid() for parent in proc.parents()):
            return True
        if _ours(" ".join(proc.cmdline())):
            return True
        return proc.environ().get(ENV_VAR) == TOKEN
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _stopped_processes() -> set[tuple[int, str]]:
    found = set()
    for proc in psutil.process_iter(["pid", "status", "name"]):
        if proc.info["status"] == psutil.STATUS_STOPPED and _started_by_this_session(proc):
            found.add((proc.info["pid"], proc.info["name"]))
    return found


def _children() -> set[tuple[int, str]]:
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.add((child.pid, " ".join(child.cmdline())[:120]))
        except psutil.NoSuchProcess:
            pass
    return out


#: what a Docker engine run with default flags changes on the host, and leaves changed
FORWARDING_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)
ENGINE_PROCESSES = ("dockerd", "containerd", "docker-proxy", "runc")
ENGINE_PATHS = ("/etc/docker/key.json", "/run/docker", "/var/run/docker.sock", "/var/lib/docker",
                "/run/containerd", "/var/lib/containerd")  # fmt: skip
SYSTEM_ENGINE = "/run/docker.sock"


def _sysctls() -> set[str]:
    values = set()
    for key in FORWARDING_SYSCTLS:
        try:
            values.add(f"{key.replace('/', '.')}={Path('/proc/sys', key).read_text().strip()}")
        except OSError:
            continue  # br_netfilter not loaded: no such key
    return values


def _engine_processes() -> set[tuple[int, str]]:
    """dockerd, containerd and the shims (reparented, but naming the engine's directory)."""
    found = set()
    for proc in psutil.process_iter(["pid", "name"]):
        name = proc.info["name"] or ""
        engine = name in ENGINE_PROCESSES or name.startswith("containerd-shim")
        if engine and _started_by_this_session(proc):
            found.add((proc.info["pid"], name))
    return found


def _engine_mounts() -> set[str]:
    """overlay and nsfs mounts (containers' root filesystems, their namespaces' bind mounts)
    and anything mounted under a docker or containerd directory."""
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, fstype = fields[4], fields[fields.index("-") + 1]
        if point.startswith("/run/netns/"):
            continue  # `ip netns` names: the network namespaces check covers them
        if fstype in ("overlay", "nsfs") or "docker" in point or "containerd" in point:
            found.add(f"{fstype} {point}")
    return found


def _engine_paths() -> set[str]:
    return {path for path in ENGINE_PATHS if os.path.lexists(path)}


def _system_engine_objects() -> set[str]:
    """Containers and networks of the host's own Docker engine, when one answers."""
    docker = shutil.which("docker")
    if docker is None or not os.path.exists(SYSTEM_ENGINE):
        return set()
    env = {**os.environ, "DOCKER_HOST": f"unix://{SYSTEM_ENGINE}"}
    found = set()
    for kind, argv in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"])):
        proc = subprocess.run([docker, *argv], capture_output=True, text=True, env=env,
                              timeout=30)  # fmt: skip
        found |= {f"{kind} {ident}" for ident in proc.stdout.split()}
    return found


def snapshot() -> dict[str, set]:
    return {
        "network namespaces": _namespaces(),
        "host links": _host_links(),
        "host qdiscs": _host_qdiscs(),
        "host nft tables": _host_nft_tables(),
        "stopped processes": _stopped_processes(),
        "forwarding sysctls": _sysctls(),
        "container engine processes": _engine_processes(),
        "container mounts": _engine_mounts(),
        "container engine files": _engine_paths(),
        "system engine containers and networks": _system_engine_objects(),
    }


def leftovers(before: dict[str, set]) -> list[str]:
    after = snapshot()
    problems = [
        f"{kind}: {sorted(after[kind] - before[kind])}"
        for kind in before
        if after[kind] - before[kind]
    ]
    children = _children()
    if children:
        problems.append(f"child processes: {sorted(children)}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def machine_stays_clean():
    before = snapshot()
    yield
    # Processes get a moment to finish exiting after their tests stopped them.
    for _ in range(50):
        problems = leftovers(before)
        if not problems:
            return
        time.sleep(0.1)
    pytest.fail("the tests left things behind:\n  " + "\n  ".join(problems), pytrace=False)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/root" in str(item.fspath) or "tests\\root" in str(item.fspath):
            item.add_marker(pytest.mark.root)


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and not IS_ROOT:
        if os.environ.get("CI"):
            pytest.fail("root tests need root, and CI must run them: run .ci/run as root")
        pytest.skip("needs root: real network namespaces")


_names = itertools.count()


@pytest.fixture
def lab_name() -> str:
    """A short lab name unique to this test session (labs from other sessions coexist)."""
    return f"{TOKEN}{next(_names)}"


@pytest.fixture
def chaos_cli():
    """Run the real `chaos` command; returns (exit code, stdout, stderr)."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "chaos"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "200"},
        )

    return run


#: lines a test wants in the terminal summary even when it passes (``report_line``)
SUMMARY_LINES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_line(request):
    """Append a line to the session's terminal summary (e.g. which clauses a control broke)."""
    return request.config.stash.setdefault(SUMMARY_LINES, []).append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(SUMMARY_LINES, [])
    if lines:
        terminalreporter.section("signatures on their controls")
        for line in lines:
            terminalreporter.write_line(line)
