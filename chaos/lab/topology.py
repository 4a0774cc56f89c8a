"""Build and tear down a lab: client → gateway → proxy → origin, one namespace each.

Addressing (198.18.0.0/15, RFC 2544; the same in every lab, since each lab's addresses live
only inside its own namespaces)::

    client  198.18.1.10..  ──  198.18.1.1  gateway  198.18.2.1  ──  198.18.2.2  proxy
    proxy   198.18.3.1     ──  198.18.3.2  origin

Every namespace routes through its neighbours, and gateway and proxy forward packets, so a
packet that escapes the proxy (seeds 000 and 003) can still reach the origin, as on a real
network. With ``proxy.kind: external`` there is no gateway or proxy namespace: the client and
origin namespaces are linked to the host (host sides 198.18.1.1 and 198.18.3.1), where the
user's own proxy listens and forwards to the origin at 198.18.3.2.

A lab is recorded in ``/run/chaos/labs/<name>.json`` as soon as its first namespace exists,
so ``chaos lab down`` can always find and remove what was made, even after a crash.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos.errors import LabError, NotRootError
from chaos.kernel import netns, processes
from chaos.kernel.processes import ProcessRecord
from chaos.record import schema
from chaos.scenario.model import LabSpec, Scenario

STATE_DIR = Path(os.environ.get("CHAOS_STATE_DIR", "/run/chaos/labs"))
NS_PREFIX = "chaos-"
ROLES = ("client", "gateway", "proxy", "origin")

CLIENT_NET = "198.18.1"
PROXY_NET = "198.18.2"
ORIGIN_NET = "198.18.3"
FIRST_CLIENT_HOST = 10
LAB_TABLE = "chaos_lab"
TPROXY_MARK = 1
TPROXY_TABLE = 100
#: the separate_isn offset: XOR of the top bit is adding 2^31 modulo 2^32, exactly, so the
#: sequence arithmetic of every connection stays consistent; no offset is further away
ISN_OFFSET = 0x80000000


@dataclass(frozen=True)
class LabCounterSpec:
    """A named nftables counter the lab keeps in ``role``'s ``inet`` table, and what it counts."""

    role: str
    counter: str
    match: str  # the rule's match, before "counter name ..."
    hook: str  # "HOOK priority PRIORITY" of the chain that counts


#: measurement -> counter; read by :class:`chaos.collect.labcounters.LabCounter`
LAB_COUNTERS: dict[str, LabCounterSpec] = {
    # packets from the clients' own addresses that bypassed the proxy (seeds 000 and 003)
    schema.LAB_ESCAPES: LabCounterSpec(
        "origin", "escaped", f"ip saddr {CLIENT_NET}.0/24", "prerouting priority raw"
    ),
    # segments the proxy namespace forwards (not proxies) between clients and origin: what
    # escaped a proxy socket that is gone (seed 000: the late FIN after FIN_WAIT2 expired,
    # and the ACKs it draws), counted at the topology level whatever the endpoints do
    schema.LAB_FORWARDED_TO_ORIGIN: LabCounterSpec(
        "proxy",
        "forwarded_to_origin",
        f"ip saddr {CLIENT_NET}.0/24 ip daddr {ORIGIN_NET}.0/24",
        "forward priority filter",
    ),
    schema.LAB_FORWARDED_TO_CLIENTS: LabCounterSpec(
        "proxy",
        "forwarded_to_clients",
        f"ip saddr {ORIGIN_NET}.0/24 ip daddr {CLIENT_NET}.0/24",
        "forward priority filter",
    ),
    # resets forwarded toward the clients (seed 004: the proxy resets after the handshake)
    schema.LAB_RESETS: LabCounterSpec(
        "gateway",
        "resets_to_clients",
        f"ip daddr {CLIENT_NET}.0/24 meta l4proto tcp tcp flags & rst == rst",
        "forward priority filter",
    ),
}


def counter_table(counters: list[LabCounterSpec]) -> str:
    """Table ``inet chaos_lab`` with the named ``counters``, one watching chain each."""
    lines = [f"table inet {LAB_TABLE} {{"]
    for spec in counters:
        lines.append(f"  counter {spec.counter} {{}}")
    for spec in counters:
        lines += [
            f"  chain watch_{spec.counter} {{",
            f"    type filter hook {spec.hook}; policy accept;",
            f"    {spec.match} counter name {spec.counter}",
            "  }",
        ]
    return "\n".join(lines) + "\n}\n"


@dataclass(frozen=True)
class Link:
    """A veth pair: ``a`` in namespace ``ns_a`` (None: host) and ``b`` in ``ns_b``."""

    ns_a: str | None
    if_a: str
    ip_a: list[str]
    ns_b: str
    if_b: str
    ip_b: list[str]


@dataclass(frozen=True)
class PeerRule:
    """Connections of ``role`` whose remote address lies in ``remote`` end in ``peer``.

    ``peer`` is a role, or ``"host"`` (an external proxy runs in the controller's namespace).
    ``nat`` is set where the lab rewrites an address on the way (the gateway's DNAT): an
    endpoint ``(address, port)`` that ``role`` knows as the first and ``peer`` as the second.
    """

    role: str
    remote: str  # a network, e.g. "198.18.1.0/24"
    peer: str
    nat: tuple[tuple[str, int], tuple[str, int]] | None = None


@dataclass(frozen=True)
class Plan:
    """Names and addresses of one lab, derived from its name and spec only."""

    name: str
    spec: LabSpec

    @property
    def external(self) -> bool:
        return self.spec.proxy.kind == "external"

    def namespace(self, role: str) -> str:
        return f"{NS_PREFIX}{self.name}-{role}"

    @property
    def roles(self) -> tuple[str, ...]:
        return ("client", "origin") if self.external else ROLES

    @property
    def namespaces(self) -> dict[str, str]:
        return {role: self.namespace(role) for role in self.roles}

    @property
    def client_addresses(self) -> list[str]:
        count = self.spec.client.addresses
        return [f"{CLIENT_NET}.{FIRST_CLIENT_HOST + i}" for i in range(count)]

    @property
    def origin_address(self) -> str:
        return f"{ORIGIN_NET}.2"

    @property
    def proxy_address(self) -> str:
        """Where the proxy listens (the client's target)."""
        if self.external:
            assert self.spec.proxy.address
            return self.spec.proxy.address.rpartition(":")[0]
        return f"{PROXY_NET}.2"

    @property
    def proxy_port(self) -> int:
        if self.external:
            assert self.spec.proxy.address
            return int(self.spec.proxy.address.rpartition(":")[2])
        return self.spec.proxy.port

    @property
    def client_target(self) -> tuple[str, int]:
        """Where clients connect: the proxy, or the origin through an intercepting gateway."""
        if self.spec.gateway.intercept or self.spec.proxy.transparent:
            return self.origin_address, self.spec.origin.port
        return self.proxy_address, self.proxy_port

    @property
    def proxy_upstream_address(self) -> str:
        """The proxy's own address on the origin side (its source toward the origin)."""
        return f"{ORIGIN_NET}.1"

    def peer_rules(self) -> list[PeerRule]:
        """Where the other end of each role's connections lives, by remote address.

        Read by the zombie scan to confirm a silent connection against the right namespace:
        the proxy talks to clients (their subnet) and to the origin; with ``intercept`` the
        client dials the origin's address and the gateway's DNAT hands it to the proxy.
        """
        if self.external:
            # the user's proxy runs on the host, on the host ends of both links
            return [
                PeerRule("client", f"{self.proxy_address}/32", "host"),
                PeerRule("origin", f"{ORIGIN_NET}.1/32", "host"),
            ]
        origin = f"{self.origin_address}/32"
        rules = [
            PeerRule("client", f"{self.proxy_address}/32", "proxy"),
            PeerRule("proxy", f"{CLIENT_NET}.0/24", "client"),
            PeerRule("proxy", origin, "origin"),
            PeerRule("origin", f"{self.proxy_upstream_address}/32", "proxy"),
        ]
        if self.spec.gateway.intercept:
            # the clients dial the origin's address; the gateway hands that to the proxy
            dialled = (self.origin_address, self.spec.origin.port)
            proxy = (self.proxy_address, self.proxy_port)
            rules[1] = PeerRule("proxy", f"{CLIENT_NET}.0/24", "client", (proxy, dialled))
            rules.insert(0, PeerRule("client", origin, "proxy", (dialled, proxy)))
        return rules

    def links(self) -> list[Link]:
        ns = self.namespace
        if self.external:
            host = self.name[:10]
            return [
                Link(
                    None,
                    f"{host}-hc",
                    [f"{CLIENT_NET}.1/24"],
                    ns("client"),
                    "eth0",
                    [f"{a}/24" for a in self.client_addresses],
                ),
                Link(
                    None,
                    f"{host}-ho",
                    [f"{ORIGIN_NET}.1/24"],
                    ns("origin"),
                    "eth0",
                    [f"{self.origin_address}/24"],
                ),
            ]
        return [
            Link(
                ns("gateway"),
                "to-client",
                [f"{CLIENT_NET}.1/24"],
                ns("client"),
                "eth0",
                [f"{a}/24" for a in self.client_addresses],
            ),
            Link(
                ns("gateway"),
                "to-proxy",
                [f"{PROXY_NET}.1/24"],
                ns("proxy"),
                "eth0",
                [f"{self.proxy_address}/24"],
            ),
            Link(
                ns("proxy"),
                "to-origin",
                [f"{self.proxy_upstream_address}/24"],
                ns("origin"),
                "eth0",
                [f"{self.origin_address}/24"],
            ),
        ]

    def routes(self) -> dict[str, list[tuple[str, str]]]:
        """(destination, gateway) per role; "default" is the default route."""
        if self.external:
            return {
                "client": [("default", f"{CLIENT_NET}.1")],
                "origin": [("default", f"{ORIGIN_NET}.1")],
            }
        return {
            "client": [("default", f"{CLIENT_NET}.1")],
            "gateway": [(f"{ORIGIN_NET}.0/24", self.proxy_address)],
            "proxy": [("default", f"{PROXY_NET}.1")],
            "origin": [("default", self.proxy_upstream_address)],
        }

    def nft_rulesets(self) -> dict[str, str]:
        """The lab's own nftables rules per role (they die with the namespaces).

        * the :data:`LAB_COUNTERS` of the roles this lab has, in table ``inet chaos_lab``
          (origin: ``lab_escapes``; gateway: ``lab_resets``);
        * gateway, with ``intercept``: DNAT of client connections to the origin's address
          onto the proxy, so conntrack holds the translation (seed 003).
        """
        rulesets: dict[str, str] = {}
        for role in self.roles:
            counters = [c for c in LAB_COUNTERS.values() if c.role == role]
            if counters:
                rulesets[role] = counter_table(counters)
        if self.spec.gateway.intercept:
            rulesets["gateway"] += (
                f"table ip {LAB_TABLE} {{\n"
                "  chain intercept {\n"
                "    type nat hook prerouting priority dstnat; policy accept;\n"
                f"    ip saddr {CLIENT_NET}.0/24 ip daddr {self.origin_address} "
                f"tcp dport {self.spec.origin.port} "
                f"dnat to {self.proxy_address}:{self.proxy_port}\n"
                "  }\n}\n"
            )
        if self.spec.separate_isn:
            rulesets["proxy"] = rulesets.get("proxy", "") + self.isn_offset_table()
        if self.spec.proxy.transparent:
            # SYNs to the origin go to HAProxy's transparent listener; packets of existing
            # transparent sockets (both legs) are delivered locally by mark. Anything else,
            # e.g. a late FIN whose proxy socket is gone, is forwarded as it is (seed 000).
            rulesets["proxy"] = rulesets.get("proxy", "") + (
                f"table inet {LAB_TABLE} {{\n"
                "  chain divert {\n"
                "    type filter hook prerouting priority mangle; policy accept;\n"
                f"    meta l4proto tcp socket transparent 1 meta mark set {TPROXY_MARK} accept\n"
                f"    ip daddr {self.origin_address} tcp dport {self.spec.origin.port} "
                f"tcp flags & (syn | ack) == syn meta mark set {TPROXY_MARK} "
                f"tproxy ip to {self.proxy_address}:{self.proxy_port}\n"
                "  }\n}\n"
            )
        return rulesets

    def isn_offset_table(self) -> str:
        """``separate_isn``: the proxy namespace sees the client side's and the origin side's
        sequence numbers offset by :data:`ISN_OFFSET`, as if each were a host with its own
        ISN secret.

        Namespaces share one kernel, so one ISN secret: a transparent proxy's two legs carry
        the same 4-tuple and get ISNs a clock tick apart, and a segment that escapes from one
        leg lands inside the other's window (seed 000's ACKs then draw RFC 5961 challenge
        ACKs, which separate hosts would not). Every segment coming in from either side gets
        ``seq + 2^31`` (before anything else, priority raw), every segment going out to
        either side ``ack - 2^31`` (last, after routing): connections the proxy terminates
        see one consistent space, and a segment *forwarded* from one side to the other
        (an escape) arrives offset by 2^31 in both numbers. SACK blocks are not rewritten
        (the lab loses nothing, so they are rare).
        """
        sides = '{ "eth0", "to-origin" }'
        return (
            "table inet chaos_isn {\n"
            "  chain inbound {\n"
            "    type filter hook prerouting priority raw - 10; policy accept;\n"
            f"    iifname {sides} tcp sequence set tcp sequence ^ {ISN_OFFSET:#x}\n"
            "  }\n"
            "  chain outbound {\n"
            "    type filter hook postrouting priority srcnat + 10; policy accept;\n"
            f"    oifname {sides} tcp flags & ack == ack "
            f"tcp ackseq set tcp ackseq ^ {ISN_OFFSET:#x}\n"
            "  }\n}\n"
        )

    def sysctls(self) -> dict[str, dict[str, object]]:
        """Per-role sysctls: the lab's own routing needs, then the scenario's."""
        spec = self.spec
        own: dict[str, dict[str, object]] = {
            "client": dict(spec.client.sysctls),
            "origin": dict(spec.origin.sysctls),
        }
        if not self.external:
            own["gateway"] = {"net.ipv4.ip_forward": 1, **spec.gateway.sysctls}
            own["proxy"] = {"net.ipv4.ip_forward": 1, **spec.proxy.sysctls}
        return own


@dataclass
class LabState:
    """What a lab made, on disk; the single source for status and teardown."""

    name: str
    namespaces: dict[str, str]
    host_links: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    run_dir: str = ""
    proxy: dict[str, object] = field(default_factory=dict)
    origin: dict[str, object] = field(default_factory=dict)
    client_addresses: list[str] = field(default_factory=list)
    #: where clients connect ({"host", "port"}): the proxy, or the origin when intercepted
    target: dict[str, object] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    #: who made it ({pid, started, host}: see processes.Owner); `lab down --all` leaves the
    #: labs of live owners (a running `chaos run`) alone
    owner: dict[str, object] = field(default_factory=dict)

    def owned_by(self) -> processes.Owner | None:
        if not self.owner:
            return None
        return processes.Owner(**self.owner)  # type: ignore[arg-type]

    @staticmethod
    def path(name: str) -> Path:
        return STATE_DIR / f"{name}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        data = dict(self.__dict__, processes=[p.to_json() for p in self.processes])
        tmp = self.path(self.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path(self.name))

    @classmethod
    def load(cls, name: str) -> LabState | None:
        try:
            data = json.loads(cls.path(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(
                f"lab state file {cls.path(name)} is unreadable: {exc}",
                f"remove it, then run `chaos lab down {name}` again",
            ) from None
        data["processes"] = [ProcessRecord(**p) for p in data.get("processes", [])]
        return cls(**data)

    def process(self, role: str) -> ProcessRecord | None:
        return next((p for p in self.processes if p.role == role), None)


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            "this command builds network namespaces and needs root",
            "run it as root, e.g. `sudo .venv/bin/chaos ...`",
        )


def list_labs() -> list[str]:
    """Labs with a state file, and labs whose namespaces exist without one."""
    names = {p.stem for p in STATE_DIR.glob("*.json")} if STATE_DIR.is_dir() else set()
    for ns in netns.list_namespaces():
        if ns.startswith(NS_PREFIX):
            base, _, role = ns[len(NS_PREFIX) :].rpartition("-")
            if role in ROLES and base:
                names.add(base)
    return sorted(names)


def running_owner(name: str) -> processes.Owner | None:
    """The owner of lab ``name`` when it is still running (e.g. its `chaos run`), else None
    (no state file, no owner recorded, or the owner is gone)."""
    state = LabState.load(name)
    owner = state.owned_by() if state is not None else None
    return owner if owner is not None and owner.alive() else None


def orphan_namespaces(name: str) -> list[str]:
    return [
        ns
        for ns in netns.list_namespaces()
        if ns in {f"{NS_PREFIX}{name}-{role}" for role in ROLES}
    ]


# --- building ----------------------------------------------------------------------------


def _add_addresses(ipr, index: int, cidrs: list[str]) -> None:
    for cidr in cidrs:
        address, _, prefix = cidr.partition("/")
        ipr.addr("add", index=index, address=address, prefixlen=int(prefix))


def _create_link(link: Link) -> None:
    with netns.ipr(link.ns_a) as ipr:
        if link.ns_a is None and ipr.link_lookup(ifname=link.if_a):
            raise LabError(
                f"host interface {link.if_a} already exists (an external lab of the same name?)",
                f"remove it with `chaos lab down` for that lab, or `ip link del {link.if_a}`",
            )
        ipr.link(
            "add",
            ifname=link.if_a,
            kind="veth",
            peer={"ifname": link.if_b, "net_ns_fd": netns.path_of(link.ns_b)},
        )
        index = ipr.link_lookup(ifname=link.if_a)[0]
        _add_addresses(ipr, index, link.ip_a)
        ipr.link("set", index=index, state="up")
    with netns.ipr(link.ns_b) as ipr:
        index = ipr.link_lookup(ifname=link.if_b)[0]
        _add_addresses(ipr, index, link.ip_b)
        ipr.link("set", index=index, state="up")


def _loopback_up(namespace: str) -> None:
    with netns.ipr(namespace) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _add_routes(namespace: str, routes: list[tuple[str, str]]) -> None:
    with netns.ipr(namespace) as ipr:
        for dst, gateway in routes:
            if dst == "default":
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
            else:
                ipr.route("add", dst=dst, gateway=gateway)


def apply_sysctls(namespace: str, values: dict[str, object]) -> dict[str, str]:
    """Set sysctls in a namespace; returns their previous values."""
    previous = {}
    for key, value in values.items():
        netns.check_sysctl_key(key)
        previous[key] = netns.sysctl_set(namespace, key, value)  # type: ignore[arg-type]
    return previous


def check_sysctls(plan: Plan) -> None:
    """Check every scenario sysctl against what a fresh namespace exposes, before building."""
    probe = f"{NS_PREFIX}{plan.name}-probe"
    wanted = {key for values in plan.sysctls().values() for key in values}
    if not wanted:
        return
    netns.create(probe)
    try:
        for key in sorted(wanted):
            netns.check_sysctl_key(key)
            path = netns.sysctl_path(key)
            netns.sysctl_get(probe, key)  # unknown → SysctlError
            if not netns.run_in(probe, lambda p=path: os.stat(p).st_mode & 0o200):
                from chaos.errors import SysctlError

                raise SysctlError(f"sysctl {key!r} is read-only", "remove it from the scenario")
    finally:
        netns.remove(probe)


def build(plan: Plan, state: LabState) -> None:
    """Create namespaces, links, addresses, routes and sysctls; records progress in ``state``."""
    state.save()  # first: a lab being built has its owner on record (`lab down --all`)
    for namespace in plan.namespaces.values():
        netns.create(namespace)
        state.save()
        _loopback_up(namespace)
    for link in plan.links():
        if link.ns_a is None:
            state.host_links.append(link.if_a)
            state.save()
        _create_link(link)
    for role, routes in plan.routes().items():
        _add_routes(plan.namespace(role), routes)
    for role, values in plan.sysctls().items():
        apply_sysctls(plan.namespace(role), values)
    for role, ruleset in plan.nft_rulesets().items():
        load_nft(plan.namespace(role), ruleset)
    if plan.spec.proxy.transparent:
        _local_delivery_by_mark(plan.namespace("proxy"))


def _local_delivery_by_mark(namespace: str) -> None:
    """Marked packets are for local (transparent) sockets: ``ip rule fwmark → local``."""
    with netns.ipr(namespace) as ipr:
        ipr.rule("add", fwmark=TPROXY_MARK, table=TPROXY_TABLE, priority=100)
        lo = ipr.link_lookup(ifname="lo")[0]
        # "ip route add local 0.0.0.0/0 dev lo table 100"
        ipr.route("add", dst="0.0.0.0", dst_len=0, table=TPROXY_TABLE, type=2, scope=254, oif=lo)


def load_nft(namespace: str, ruleset: str) -> None:
    result = netns.nft(namespace, ruleset)
    if result.returncode != 0:
        raise LabError(
            f"nftables refused the lab's rules in {namespace}: {result.stderr.strip()}",
            "check `chaos doctor` for nftables support",
        )


# --- teardown ----------------------------------------------------------------------------


def destroy(name: str) -> list[str]:
    """Stop the lab's processes and remove its namespaces and host links.

    Safe to call repeatedly and on half-built labs. Returns what was removed.
    """
    removed: list[str] = []
    state = LabState.load(name)
    namespaces = set(orphan_namespaces(name))
    if state is not None:
        for record in reversed(state.processes):
            alive = record.alive()
            processes.terminate(record)  # also waits for its log's last lines when it is dead
            if alive:
                removed.append(f"process {record.name} ({record.pid})")
        namespaces |= {ns for ns in state.namespaces.values() if netns.exists(ns)}
    for namespace in sorted(namespaces):
        # Anything else still running inside (a stray worker, a user's shell) would keep
        # the namespace alive after its name is gone.
        for pid in netns.pids_in(namespace):
            if pid != os.getpid():
                _kill(pid)
                removed.append(f"process {pid} in {namespace}")
        netns.remove(namespace)
        removed.append(f"namespace {namespace}")
    if state is not None:
        for ifname in state.host_links:
            if netns.delete_link(None, ifname):
                removed.append(f"host link {ifname}")
        LabState.path(name).unlink(missing_ok=True)
    return removed


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        if processes.state_of(pid) in (None, "Z"):
            break
        time.sleep(0.01)


# --- queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NamespaceStatus:
    role: str
    namespace: str
    exists: bool
    addresses: list[str]


def namespace_status(role: str, namespace: str) -> NamespaceStatus:
    if not netns.exists(namespace):
        return NamespaceStatus(role, namespace, False, [])
    with netns.ipr(namespace) as ipr:
        addresses = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(family=socket.AF_INET)
            if not a.get_attr("IFA_ADDRESS").startswith("127.")
        ]
    return NamespaceStatus(role, namespace, True, addresses)


def tcp_probe(namespace: str | None, host: str, port: int, timeout: float = 1.0) -> str:
    """Connect from a namespace: "ok", or the errno name of the failure."""

    def attempt() -> str:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return "ok"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            import errno

            return errno.errorcode.get(exc.errno or 0, str(exc))

    return netns.run_in(namespace, attempt)


def lab_name_for(scenario: Scenario, explicit: str | None) -> str:
    return explicit or scenario.lab.name or "lab"
