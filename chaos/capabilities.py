"""What this host supports, probed for real.

``chaos doctor`` shows every probe as a table; a run calls :func:`require` for the features
its scenario needs, so a missing one stops the run before anything starts, with a message
that names the missing piece and the alternative.

The probes run in a throw-away network namespace when this process may make one
(CAP_SYS_ADMIN: a lab host). An agent in a container holds only CAP_NET_ADMIN and applies
its faults in its own namespace, so there the probes run in place, where each makes and
removes objects of its own (a veth pair, uniquely named tables and devices) and touches
nothing that was there before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from chaos.errors import CapabilityError
from chaos.kernel import netns
from chaos.lab.proxies import PROXIES

TC_H_ROOT = 0xFFFFFFFF  # the root qdisc's parent handle
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def may_create_namespaces() -> bool:
    """CAP_SYS_ADMIN in the effective set (``ip netns add`` bind-mounts /run/netns)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@contextmanager
def probe_namespace() -> Iterator[str | None]:
    """A throw-away namespace, or None (this one, in place) without CAP_SYS_ADMIN."""
    if not may_create_namespaces():
        yield None
        return
    name = _unique("chaos-probe-")
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


@contextmanager
def _veth(ns: str | None) -> Iterator[int]:
    """A veth pair of the probe's own (the veth driver is loaded wherever containers run);
    yields one end's index; deleting it removes both."""
    name = _unique("chp")
    with netns.ipr(ns) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")
        try:
            yield ipr.link_lookup(ifname=name)[0]
        finally:
            netns.delete_link(ns, name)


def _netem(ns: str | None) -> Check:
    try:
        with _veth(ns) as index, netns.ipr(ns) as ipr:
            ipr.tc("add", "netem", index=index, handle="1:", delay=1000)
            # Without an explicit parent the kernel answers EINVAL even where netem works.
            ipr.tc("del", index=index, handle="1:", parent=TC_H_ROOT)
        return Check("netem", True, "sch_netem available")
    except Exception:  # any refusal means no usable netem
        return Check(
            "netem",
            False,
            "the kernel refuses qdisc kind netem (no sch_netem)",
            "use a kernel with CONFIG_NET_SCH_NETEM (Debian's stock kernel has it), "
            "or an nftables probability drop for packet loss",
        )


def _ifb(ns: str | None) -> Check:
    name = _unique("chpifb")
    try:
        with netns.ipr(ns) as ipr:
            ipr.link("add", ifname=name, kind="ifb")
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
        return Check("ifb", True, "ifb devices (ingress netem)")
    except Exception as exc:
        return Check(
            "ifb",
            False,
            f"cannot create an ifb device ({exc})",
            "load the ifb module (modprobe ifb); ingress faults need it",
        )


def _nft_families(ns: str | None) -> Check:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        return Check("nftables", False, "nft is not installed", "apt-get install nftables")
    table = _unique("chaosprobe_")

    def works(*families: str) -> bool:
        # one transaction: each table is made and deleted again (nothing stays in place)
        script = "; ".join(f"add table {f} {table}; delete table {f} {table}" for f in families)
        proc = netns.popen(ns, [nft, script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc.wait() == 0

    families = ("inet", "ip", "ip6", "bridge", "netdev")
    if works(*families):  # the common case in one nft process; else find the missing ones
        ok, missing = list(families), []
    else:
        ok = [f for f in families if works(f)]
        missing = [f for f in families if f not in ok]
    detail = "families: " + ", ".join(ok) + (f"; missing: {', '.join(missing)}" if missing else "")
    return Check(
        "nftables",
        not missing and bool(ok),
        detail,
        "" if not missing else "enable CONFIG_NF_TABLES_<FAMILY> in the kernel",
    )


def _conntrack(ns: str | None) -> Check:
    try:
        value = netns.sysctl_get(ns, "net.netfilter.nf_conntrack_max")
        return Check("conntrack", True, f"nf_conntrack_max={value}")
    except Exception:
        return Check(
            "conntrack",
            False,
            "nf_conntrack is not available",
            "modprobe nf_conntrack; conntrack scenarios need it",
        )


def _sysctl(key: str) -> Check:
    try:
        return Check(key.rpartition(".")[2], True, netns.sysctl_get(None, key).replace("\t", " "))
    except Exception as exc:
        return Check(key.rpartition(".")[2], False, str(exc))


def _program(label: str, get_version: Callable[[], str | None], fix: str) -> Check:
    version = get_version()
    return Check(label, version is not None, version or "not installed", "" if version else fix)


def probe_all() -> list[Check]:
    root = os.geteuid() == 0
    checks = [
        Check(
            "root",
            root,
            "euid 0" if root else f"euid {os.geteuid()}",
            "" if root else "run as root (sudo)",
        )
    ]
    if root:
        try:
            with probe_namespace() as ns:
                if ns is not None:
                    checks.append(Check("netns", True, "network namespaces and veth"))
                else:
                    checks.append(
                        Check(
                            "netns",
                            False,
                            "no CAP_SYS_ADMIN: probed in this namespace",
                            "labs need CAP_SYS_ADMIN; an agent's faults do not",
                        )
                    )
                checks += [_netem(ns), _ifb(ns), _nft_families(ns), _conntrack(ns)]
        except Exception as exc:
            checks.append(
                Check(
                    "netns",
                    False,
                    f"cannot create a namespace: {exc}",
                    "the kernel needs CONFIG_NET_NS",
                )
            )
    for kind, proxy in PROXIES.items():
        checks.append(_program(kind, proxy.version, f"apt-get install {proxy.package}"))
    checks += [_sysctl("net.ipv4.ip_local_port_range"), _sysctl("net.ipv4.tcp_tw_reuse")]
    return checks


FEATURES: dict[str, Callable[[str | None], Check]] = {
    "netem": _netem,
    "ifb": _ifb,
    "nftables": _nft_families,
    "conntrack": _conntrack,
}


#: features found present by this process: the kernel does not lose them (an agent asked to
#: validate many faults probes once)
_present: set[str] = set()


def print_checks(console: Console, checks: list[Check], as_json: bool = False) -> None:
    """``chaos doctor``: every probe as a table (``as_json``: as JSON on stdout)."""
    if as_json:
        sys.stdout.write(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
        return
    table = Table("check", "", "detail", "fix", box=None, pad_edge=False)
    for check in checks:
        mark = "[green]yes[/]" if check.ok else "[red]no[/]"
        table.add_row(check.name, mark, check.detail, check.fix)
    console.print(table)


def require(features: set[str]) -> None:
    """Raise CapabilityError naming every missing feature among ``features``."""
    features = features - _present
    if not features:
        return
    with probe_namespace() as ns:
        checks = [FEATURES[f](ns) for f in sorted(features)]
    _present.update(f for f, check in zip(sorted(features), checks, strict=True) if check.ok)
    failed = [check for check in checks if not check.ok]
    if failed:
        raise CapabilityError(
            "this host lacks what the scenario needs: "
            + "; ".join(f"{c.name}: {c.detail}" for c in failed),
            " / ".join(c.fix for c in failed if c.fix) or None,
        )
