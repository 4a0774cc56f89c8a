"""What an agent in a container can do: probe the kernel without CAP_SYS_ADMIN, and refuse a
`stop`/`kill` of PID 1.

The probe runs as a real process in a throw-away namespace with CAP_SYS_ADMIN dropped
(`capsh`), as in compose, where an agent holds only NET_ADMIN: it cannot make a namespace, so
it must probe in place, and leave that namespace exactly as it found it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from chaos.errors import FaultError
from chaos.faults.base import Target
from chaos.faults.registry import fault_type

PROBE = """
from chaos import capabilities
assert not capabilities.may_create_namespaces()
capabilities.require({"nftables", "conntrack", "ifb"})
print("ok")
"""


def ns_state(ns: str) -> tuple[str, str]:
    links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True)
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                            capture_output=True, text=True)  # fmt: skip
    return links.stdout, tables.stdout


def test_probe_without_cap_sys_admin_works_in_place_and_leaves_nothing(lab_name: str) -> None:
    ns = f"chaos-{lab_name}-probe"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        before = ns_state(ns)
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "capsh", "--drop=cap_sys_admin", "--",
             "-c", f"exec {sys.executable} -c '{PROBE}'"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
        assert ns_state(ns) == before
        # the control: with CAP_SYS_ADMIN the same process may make its throw-away namespace
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "from chaos import capabilities; print(capabilities.may_create_namespaces())"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.stdout.strip() == "True", proc.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


@pytest.mark.parametrize("kind", ["stop", "kill"])
def test_signal_faults_refuse_pid_1_with_the_fix(kind: str) -> None:
    with pytest.raises(FaultError) as info:
        fault_type(kind).validate(Target("pid:1", None, pids=(1,)), {})
    assert "init of its PID namespace" in info.value.message
    assert "init: true" in (info.value.hint or "")
