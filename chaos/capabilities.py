"""What this host supports, probed for real in a throw-away namespace.

``chaos doctor`` shows every probe as a table; a run calls :func:`require` for the features
its scenario needs, so a missing one stops the run before anything starts, with a message
that names the missing piece and the alternative.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from chaos.errors import CapabilityError
from chaos.kernel import netns
from chaos.lab.proxies import PROXIES

TC_H_ROOT = 0xFFFFFFFF  # the root qdisc's parent handle


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@contextmanager
def probe_namespace() -> Iterator[str]:
    name = f"chaos-probe-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def _netem(ns: str) -> Check:
    try:
        with netns.ipr(ns) as ipr:
            index = ipr.link_lookup(ifname="lo")[0]
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


def _ifb(ns: str) -> Check:
    try:
        with netns.ipr(ns) as ipr:
            ipr.link("add", ifname="ifbprobe", kind="ifb")
            ipr.link("del", index=ipr.link_lookup(ifname="ifbprobe")[0])
        return Check("ifb", True, "ifb devices (ingress netem)")
    except Exception as exc:
        return Check(
            "ifb",
            False,
            f"cannot create an ifb device ({exc})",
            "load the ifb module (modprobe ifb); ingress faults need it",
        )


def _nft_families(ns: str) -> Check:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        return Check("nftables", False, "nft is not installed", "apt-get install nftables")
    ok, missing = [], []
    for family in ("inet", "ip", "ip6", "bridge", "netdev"):
        proc = netns.popen(
            ns,
            [nft, "add", "table", family, "chaosprobe"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (ok if proc.wait() == 0 else missing).append(family)
    detail = "families: " + ", ".join(ok) + (f"; missing: {', '.join(missing)}" if missing else "")
    return Check(
        "nftables",
        not missing and bool(ok),
        detail,
        "" if not missing else "enable CONFIG_NF_TABLES_<FAMILY> in the kernel",
    )


def _conntrack(ns: str) -> Check:
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
                checks.append(Check("netns", True, "network namespaces and veth"))
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


FEATURES: dict[str, Callable[[str], Check]] = {
    "netem": _netem,
    "ifb": _ifb,
    "nftables": _nft_families,
    "conntrack": _conntrack,
}


def require(features: set[str]) -> None:
    """Raise CapabilityError naming every missing feature among ``features``."""
    if not features:
        return
    with probe_namespace() as ns:
        failed = [check for f in sorted(features) if not (check := FEATURES[f](ns)).ok]
    if failed:
        raise CapabilityError(
            "this host lacks what the scenario needs: "
            + "; ".join(f"{c.name}: {c.detail}" for c in failed),
            " / ".join(c.fix for c in failed if c.fix) or None,
        )
