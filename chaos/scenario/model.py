"""The scenario model: one frozen, strict pydantic tree for a whole run.

Every model forbids unknown keys, so a typo is an error and not a silently ignored field.
Durations accept a number of seconds or a string with a unit (``250ms``, ``10s``, ``2m``,
``1h``) and are stored as float seconds.

Later features extend this tree by adding fields with defaults, so existing scenario files
stay valid. Fault types, ``params`` and timing are checked per fault type by
:mod:`chaos.faults` when the file is loaded (the loader, :func:`chaos.faults.engine.schedule.
check_offline`), their targets once the lab exists (before the load starts); expectation
expressions by :mod:`chaos.expect` (at load time).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chaos.load import contract
from chaos.scenario.expression import check_expression, uses_baseline

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"250ms"`` → 0.25, ``"2m"`` → 120.0, ``5`` → 5.0."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 250ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected a duration such as 10s, 250ms or 2m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]
SysctlValue = int | str | list[int]


def valid_lab_name(value: str) -> str:
    # Namespace names become "<prefix>-<role>" and must stay short and filesystem-safe.
    # Host-side interface names of an external lab are "<name>-hc": at most 15 characters.
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,11}", value):
        raise ValueError(
            "use 1-12 characters: lower-case letters, digits and '-', starting with a letter "
            "or digit"
        )
    return value


LabName = Annotated[str, AfterValidator(valid_lab_name)]


def _net_sysctls(values: dict[str, SysctlValue]) -> dict[str, SysctlValue]:
    wrong = [key for key in values if not key.startswith("net.")]  # all of them at once
    if wrong:
        raise ValueError(
            f"{', '.join(map(repr, wrong))} {'is' if len(wrong) == 1 else 'are'} not a "
            "per-namespace sysctl: only net.* keys can be set per namespace"
        )
    return values


Sysctls = Annotated[dict[str, SysctlValue], AfterValidator(_net_sysctls)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- lab ---------------------------------------------------------------------------------


class Keepalive(Strict):
    """SO_KEEPALIVE and its timers (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)."""

    enabled: bool = False
    idle: Duration = 7200.0
    interval: Duration = 75.0
    count: Annotated[int, Field(ge=1, le=127)] = 9


class ClientSpec(Strict):
    """The client namespace: where Locust runs."""

    addresses: Annotated[int, Field(ge=1, le=200, description="source addresses")] = 4
    sysctls: Sysctls = Field(default_factory=dict)


class GatewaySpec(Strict):
    """The gateway namespace: routes between client and proxy."""

    sysctls: Sysctls = Field(default_factory=dict)
    intercept: bool = Field(
        default=False,
        description=(
            "clients connect to the origin's address and the gateway redirects (DNAT, "
            "conntrack) them to the proxy, as a transparent redirecting gateway (seed 003)"
        ),
    )


class ProxyTimeouts(Strict):
    connect: Duration = 5.0
    client: Duration = 30.0
    server: Duration = 30.0
    client_fin: Duration | None = None
    server_fin: Duration | None = None
    http_keep_alive: Duration = 10.0


class ProxyProcess(Strict):
    """Which processes are an external proxy, for its CPU and memory: exactly one of them."""

    pid: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="the proxy's main pid (its children are counted with it)"
    )
    name: str | None = Field(
        default=None,
        description="process name (comm, e.g. haproxy); must match one process tree",
    )
    cgroup: str | None = Field(
        default=None,
        description="a cgroup v2 path, e.g. /system.slice/haproxy.service (all its processes)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ProxyProcess:
        given = [k for k in ("pid", "name", "cgroup") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of pid, name or cgroup")
        return self


#: the ProxySpec keys a user's own configuration replaces (lab.proxy.config)
GENERATED_ONLY = (
    "maxconn", "upstream", "threads", "timeouts", "defer_accept", "transparent", "linger_zero",
    "keepalive",
)  # fmt: skip


#: what the lab sets only on a proxy it starts itself (an external one is the user's)
EXTERNAL_IGNORES = ("port", "mode", "sysctls", *GENERATED_ONLY)
#: every lab address is in here (RFC 2544); load and faults never leave it
LAB_NETWORK = "198.18.0.0/15"


def _in_lab(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(LAB_NETWORK)
    except ValueError:
        return False


class ProxySpec(Strict):
    """The proxy under test."""

    kind: Literal["haproxy", "nginx", "caddy", "external"] = "haproxy"
    mode: Literal["tcp", "http"] = "http"
    port: Port = 8080
    config: str | None = Field(
        default=None,
        description=(
            "your own configuration file for kind haproxy, nginx or caddy (a path, relative "
            "to the scenario file), used as is except for the placeholders {{ listen }} and "
            "{{ origin }}, which the lab fills; the knobs below are then yours to set in it"
        ),
    )
    address: str | None = Field(
        default=None, description="host:port of an external proxy (kind: external only)"
    )
    tls: bool = Field(
        default=False,
        description=(
            "the proxy terminates TLS on its listener with a certificate from a CA made for "
            "the run (<run>/proxy/tls/ca.crt); the load then speaks TLS too (load.tls)"
        ),
    )
    process: ProxyProcess | None = Field(
        default=None,
        description="kind external: the proxy's processes, to measure their CPU and memory",
    )
    netns: str | None = Field(
        default=None,
        description=(
            "kind external: the named network namespace (ip netns) the proxy runs in, to "
            "sample its sockets; default: the namespace of process.pid, if given"
        ),
    )
    maxconn: Annotated[int, Field(ge=1)] = 8000
    upstream: Literal["close", "keep-alive"] = Field(
        default="close", description="upstream connection reuse"
    )
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    timeouts: ProxyTimeouts = Field(default_factory=ProxyTimeouts)
    defer_accept: bool = Field(
        default=False, description="TCP_DEFER_ACCEPT on the listener (seed 004)"
    )
    transparent: bool = Field(
        default=False,
        description=(
            "a transparent proxy (seed 000): clients connect to the origin's address, the "
            "proxy namespace diverts their SYNs with nftables TPROXY, and HAProxy connects "
            "upstream from the client's own address and port (usesrc client)"
        ),
    )
    linger_zero: bool = Field(
        default=False,
        description=(
            "abortive close (RST, no FIN_WAIT): HAProxy option nolinger on every close; "
            "nginx reset_timedout_connection, on timeouts only"
        ),
    )
    keepalive: Keepalive = Field(
        default_factory=Keepalive,
        description="TCP keepalive on both legs (HAProxy cli/srvtcpka; nginx: client side)",
    )
    sysctls: Sysctls = Field(default_factory=dict)

    @model_validator(mode="after")
    def _external_needs_address(self) -> ProxySpec:
        if self.kind == "external":
            if not self.address:
                raise ValueError("kind: external needs address: HOST:PORT of your proxy")
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"address {self.address!r} is not HOST:PORT")
            if not _in_lab(host):
                raise ValueError(
                    f"address {self.address!r} is off the lab: the load goes only to "
                    f"{LAB_NETWORK} (your proxy listens on the host side of the client "
                    "link, 198.18.1.1)"
                )
            ignored = sorted(set(EXTERNAL_IGNORES) & self.model_fields_set)
            if ignored:
                raise ValueError(
                    f"kind: external runs your proxy as you configured it: "
                    f"{', '.join(ignored)} would be ignored; remove "
                    f"{'them' if len(ignored) > 1 else 'it'} from lab.proxy"
                )
        else:
            for key in ("address", "process", "netns"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is only for kind: external")
        if self.config is not None:
            if self.kind == "external":
                raise ValueError("config is for the lab's own proxy: kind haproxy, nginx or caddy")
            ignored = sorted(set(GENERATED_ONLY) & self.model_fields_set)
            if ignored:
                raise ValueError(
                    f"with config, your file sets what {', '.join(ignored)} would: remove "
                    f"{'them' if len(ignored) > 1 else 'it'} from lab.proxy"
                )
        if self.tls and self.kind == "external":
            raise ValueError("tls is for the lab's own proxy; yours terminates TLS as you set it")
        if self.kind == "caddy":
            if self.mode == "tcp":
                raise ValueError(
                    "Caddy 2.6 (Debian) proxies HTTP only: its TCP proxy (layer4) is a plugin; "
                    "use mode http, or kind haproxy/nginx for tcp"
                )
            for option in ("defer_accept", "linger_zero", "transparent"):
                if getattr(self, option):
                    raise ValueError(f"Caddy has no {option}: use kind haproxy")
            if self.keepalive.enabled:
                raise ValueError("Caddy's TCP keepalive is not set by the lab: use kind haproxy")
        if self.transparent and self.kind != "haproxy":
            raise ValueError("transparent needs kind haproxy (usesrc client)")
        if self.kind == "nginx" and self.mode == "tcp":
            for option in ("defer_accept", "linger_zero"):
                if getattr(self, option):
                    raise ValueError(f"nginx's stream module has no {option}: use kind haproxy")
        if self.upstream == "keep-alive" and self.mode == "tcp":
            raise ValueError("upstream: keep-alive needs mode: http (tcp mode pairs connections)")
        return self


class OriginSpec(Strict):
    """The origin server and its teardown behaviour (see chaos.lab.origin)."""

    port: Port = 8080
    protocol: Literal["http", "raw"] = "http"
    close: Literal["server", "client", "server-after"] = Field(
        default="server", description="who closes first"
    )
    close_after: Duration = Field(default=0.0, description="for close: server-after")
    response_delay: Duration = 0.0
    response_bytes: Annotated[int, Field(ge=0, le=64 * 1024 * 1024)] = 100
    defer_accept: Duration = Field(default=0.0, description="TCP_DEFER_ACCEPT; 0 is off")
    keepalive: Keepalive = Field(default_factory=Keepalive)
    linger_zero: bool = Field(default=False, description="abortive close with SO_LINGER 0")
    read_delay: Duration = Field(default=0.0, description="delayed reader")
    read_rate: Annotated[int, Field(ge=0)] = Field(
        default=0, description="slow reader, bytes/s; 0 is unlimited"
    )
    rcvbuf: Annotated[int, Field(ge=256)] | None = None
    workers: Annotated[int, Field(ge=1, le=64)] | None = None
    backlog: Annotated[int, Field(ge=1)] = 4096
    access_log: bool = Field(
        default=False, description="log every request's peer (costs speed at high rates)"
    )
    tls: bool = Field(
        default=False,
        description=(
            "the origin speaks TLS (the upstream leg), with a certificate for its address from "
            "the run's CA (<run>/proxy/tls/ca.crt), which the lab's proxy then verifies; "
            "proxy mode http only"
        ),
    )
    sysctls: Sysctls = Field(default_factory=dict)

    @model_validator(mode="after")
    def _close_after_needed(self) -> OriginSpec:
        if self.close == "server-after" and self.close_after <= 0:
            raise ValueError("close: server-after needs close_after > 0")
        if self.tls and self.read_rate:
            raise ValueError("read_rate (a slow reader) is plain TCP only: not with tls")
        return self

    def server_config(self, host: str = "0.0.0.0") -> dict[str, object]:
        """The JSON config that ``python -m chaos.lab.origin`` takes (without the TLS files,
        which the lab makes: ``tls_cert``, ``tls_key``)."""
        config = self.model_dump(exclude={"sysctls", "access_log", "tls"})
        config["host"] = host
        # TCP_DEFER_ACCEPT and the keepalive timers are whole seconds at the socket level.
        config["defer_accept"] = math.ceil(self.defer_accept)
        keepalive = config["keepalive"]
        assert isinstance(keepalive, dict)
        for key in ("idle", "interval"):
            keepalive[key] = max(1, math.ceil(keepalive[key]))
        return config


class LabSpec(Strict):
    """Topology: client → gateway → proxy → origin, one network namespace each."""

    name: LabName | None = Field(
        default=None, description="namespace prefix; defaults to a name derived from the run"
    )
    client: ClientSpec = Field(default_factory=ClientSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    proxy: ProxySpec = Field(default_factory=ProxySpec)
    origin: OriginSpec = Field(default_factory=OriginSpec)
    log_cap: ByteSize = Field(
        default=ByteSize(256 * 2**20),
        description=(
            "bytes each per-connection log (the proxy's, the origin's access log) may use on "
            "disk, rotated parts included (e.g. 64MiB); the oldest lines go first"
        ),
    )
    separate_isn: bool = Field(
        default=False,
        description=(
            "emulate separate hosts: every namespace shares one kernel and so one ISN secret, "
            "which makes the ISNs of connections with the same 4-tuple (a transparent proxy's "
            "two legs) nearly equal; with this, the proxy offsets by 2^31 the sequence space "
            "of everything it receives from the client side and from the origin side"
        ),
    )

    @model_validator(mode="after")
    def _separate_isn_needs_a_proxy(self) -> LabSpec:
        if self.separate_isn and self.proxy.kind == "external":
            raise ValueError("separate_isn needs the lab's own proxy namespace")
        return self



# --- load --------------------------------------------------------------------------------


# One definition of the modes: the load contract (the locustfiles' choices).
TeardownMode = Literal[contract.TEARDOWN_MODES]  # type: ignore[valid-type]
RateMode = Literal[contract.RATE_MODES]  # type: ignore[valid-type]


class LoadTls(Strict):
    """TLS in the load (the raw user, ``locustfiles/_tls.py``): the handshake is timed as the
    phase ``tls``; what each teardown mode sends is in the README ("TLS in the load")."""

    resumption: bool = Field(
        default=False,
        description="each user offers the session of its previous connection (TLS 1.3 ticket)",
    )
    close_notify: bool = Field(
        default=True,
        description=(
            "client-close, idle-before-send, slow-reader: close_notify, the peer's close_notify, "
            "then the FIN; false: a FIN without close_notify. abort sends an RST and never a "
            "close_notify; the modes that wait for the server's FIN never send one"
        ),
    )
    ca: str | None = Field(
        default=None,
        description=(
            "the CA file (PEM) the load trusts, relative to the scenario file; default: the "
            "run's CA when the lab's proxy has a certificate from it, else the system's CAs"
        ),
    )


#: A tcp-mode proxy passes bytes: TLS to the origin would be the client's own, end to end,
#: with a certificate naming the origin where the client dialled the proxy (not built).
ORIGIN_TLS_NEEDS_HTTP = (
    "origin.tls needs proxy mode http: a tcp-mode proxy does not speak to the origin itself, "
    "it passes the client's bytes through; use proxy mode: http (the proxy then speaks TLS "
    "upstream), or remove origin.tls"
)


def origin_tls_needs_http(lab: Mapping[str, Any]) -> bool:
    """``lab.origin.tls`` behind the lab's own proxy in tcp mode (raw scenario data)."""
    proxy, origin = lab.get("proxy") or {}, lab.get("origin") or {}
    if not isinstance(proxy, Mapping) or not isinstance(origin, Mapping):
        return False
    own_tcp = proxy.get("mode") == "tcp" and proxy.get("kind") != "external"
    return origin.get("tls") is True and own_tcp


#: why user: http cannot go through a TLS proxy (the scenario model and chaos validate say it)
TLS_NEEDS_RAW = (
    "TLS in the load (load.tls, or lab.proxy.tls) needs user: raw: the HTTP user does not "
    "speak TLS; use user: raw (it speaks HTTP to an http origin), or load.tls: false"
)


class LoadSpec(Strict):
    """Locust load from the client namespace (see locustfiles/)."""

    user: Literal[contract.USER_KINDS] = Field(  # type: ignore[valid-type]
        default="raw",
        description="raw: RawTcpUser (every field below); http: HttpLoadUser (FastHttpUser: "
        "rate, rate_mode, rate_steps, step_duration, connect_timeout, source addresses)",
    )
    users: Annotated[int, Field(ge=1, le=100000)] = 20
    spawn_rate: Annotated[float, Field(gt=0)] = 100.0
    workers: Annotated[int, Field(ge=1, le=256)] | None = Field(
        default=None, description="Locust worker processes; default one per core"
    )
    rate: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="target new connections per second; unset: as fast as possible"
    )
    rate_mode: RateMode = contract.default("rate_mode")  # type: ignore[assignment]
    rate_steps: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    step_duration: Duration = contract.default("step_seconds")  # type: ignore[assignment]
    teardown: TeardownMode = contract.default("teardown")  # type: ignore[assignment]
    hold: Duration = Field(default=0.0, description="hold-after-fin: seconds held after FIN")
    idle_before_send: Duration = 0.0
    rcvbuf: Annotated[int, Field(ge=256)] | None = None
    read_rate: Annotated[int, Field(ge=0)] = 0
    keepalive: Keepalive = Field(default_factory=Keepalive)
    connect_timeout: Duration = contract.default("connect_timeout")  # type: ignore[assignment]
    slow_connect: Duration = Field(
        default=float(contract.default("slow_connect_ms")) / 1000,  # type: ignore[arg-type]
        description="a connect slower than this fails its connection as SlowConnect",
    )
    tls: LoadTls | bool | None = Field(
        default=None,
        description=(
            "speak TLS: a mapping (or true) does, false does not; unset: TLS when the lab's "
            "proxy terminates it (lab.proxy.tls)"
        ),
    )

    @field_validator(*contract.SCENARIO_FIELDS, mode="after")
    @classmethod
    def _honoured(cls, value: object, info: ValidationInfo) -> object:
        """A field set in the file that the chosen user would silently ignore is an error
        (at the field's own line). Runs for the fields the file sets; ``user`` comes first."""
        user = info.data.get("user", contract.RAW)
        name = info.field_name or ""
        if contract.honoured_by(name, user):
            return value
        field = cls.model_fields[name]
        unchanged = (
            contract.HTTP_TEARDOWN
            if name == "teardown"
            else field.get_default(call_default_factory=True)
        )
        if value == unchanged:
            return value
        raise ValueError(
            f"user: {user} does not honour {name} (only user: raw does); remove it or use "
            "user: raw"
        )

    @model_validator(mode="after")
    def _mode_parameters(self) -> LoadSpec:
        needs = {
            "hold-after-fin": ("hold", self.hold),
            "idle-before-send": ("idle_before_send", self.idle_before_send),
            "slow-reader": ("read_rate", self.read_rate),
        }
        if self.teardown in needs:
            field, value = needs[self.teardown]
            if not value:
                raise ValueError(f"teardown: {self.teardown} needs {field} > 0")
        return self


# --- faults, collectors, sink, expectations ----------------------------------------------


class FaultSpec(Strict):
    """A scheduled fault. The fault controller validates ``params`` per fault type.

    ``params`` are parsed once: the first stage that parses them (the loader's offline
    check, else the fault schedule) keeps the fault type's params models, one per ramp
    step, on the spec (:meth:`keep_parsed`), and every later stage reads them back
    (:attr:`parsed`; :func:`chaos.faults.engine.schedule.parsed_steps`). They are opaque
    here: this model sits below the fault types and may not import them. The parsed
    models are derived from ``params``, not part of the spec's value: equality and dumps
    ignore them. A spec built again from data (``model_validate``, a variant that patches
    ``faults``) starts unparsed.
    """

    type: str
    target: str = Field(description="a role (client, gateway, proxy, origin) or agent URL")
    at: Duration = 0.0
    duration: Duration | None = Field(default=None, alias="for")
    every: Duration | None = None
    params: dict[str, object] = Field(default_factory=dict)
    _parsed: tuple[object, ...] | None = PrivateAttr(default=None)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def parsed(self) -> tuple[object, ...] | None:
        """The params of each ramp step as the fault type parsed them (None: not yet)."""
        return self._parsed

    def keep_parsed(self, steps: tuple[object, ...]) -> None:
        """Keep what the fault type made of ``params`` (a cache: the spec stays frozen)."""
        self._parsed = steps

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaultSpec):
            return NotImplemented
        return self.__dict__ == other.__dict__  # the fields, not the parsed cache


class CollectorsSpec(Strict):
    interval: Duration = 1.0
    roles: list[Literal["client", "gateway", "proxy", "origin"]] = Field(
        default_factory=lambda: ["client", "gateway", "proxy", "origin"]
    )
    zombie_idle: Duration = Field(default=30.0, description="zombie candidate threshold")
    zombie_period: Duration = Field(
        default=10.0, description="seconds between zombie scans (each walks every socket)"
    )
    time_wait_timers: list[Literal["client", "gateway", "proxy", "origin"]] = Field(
        default_factory=list,
        description=(
            "roles whose TIME_WAIT timers are followed socket by socket (time_wait_timers: "
            "how many were rescheduled by a late segment); costly with many TIME_WAIT sockets"
        ),
    )
    budget_period: Duration = Field(
        default=0.0,
        description=(
            "seconds between port-budget samples (0: every tick); the budget is the costly "
            "part of a sample at 100k+ sockets"
        ),
    )

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("interval must be > 0")
        return value


class InfluxSpec(Strict):
    """InfluxDB v2 connection; unset fields come from INFLUXDB_V2_* environment variables."""

    url: str | None = None
    org: str | None = None
    bucket: str | None = None
    token_env: str = "INFLUXDB_V2_TOKEN"


class SinkSpec(Strict):
    influxdb: InfluxSpec | None = None


class Expectation(Strict):
    """``metric op value`` over collected samples, in one phase of the run.

    See :mod:`chaos.expect` for the phases, the aggregates and the value expressions.
    """

    metric: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
        description="measurement.field, e.g. tcp_states.time_wait",
    )
    op: Literal[">=", ">", "<=", "<", "==", "!="]
    value: float | str = Field(
        description="a number or an expression over rate, users, duration, baseline, ..."
    )
    when: Literal["baseline", "during", "after", "end"] = "end"
    role: Literal["client", "gateway", "proxy", "origin"] | None = None
    agg: Literal["max", "min", "mean", "last", "first", "sum", "delta"] | None = Field(
        default=None, description="how the window's samples become one number (default max)"
    )
    within: Duration | None = Field(
        default=None, description="after: seconds after the revert; baseline: before the fault"
    )
    where: dict[str, str] = Field(default_factory=dict, description="tag filters")
    fault: int | None = Field(default=None, ge=0, description="index of the fault (default all)")
    label: str = ""

    @field_validator("value")
    @classmethod
    def _expression(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            check_expression(value)
        return value


class SweepSpec(Strict):
    """How ``chaos sweep`` judges this scenario, step by step (see :mod:`chaos.sweep`).

    A step passes when it had no failure of any class, reached 90 % of its target rate,
    kept the p99 of whole connections at or under ``max_p99`` (when set) and met every
    expectation listed here (checked over the step's seconds, ``rate`` = the step's
    target). The scenario's own ``expect:`` (its signature) is reported per step but never
    decides a step. ``chaos run`` ignores this block."""

    rates: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=list, description="the steps when `chaos sweep` gets no --rates"
    )
    step_duration: Duration | None = Field(
        default=None, description="seconds per step when `chaos sweep` gets no --step-duration"
    )
    max_p99: Duration | None = Field(
        default=None, description="a step's p99 latency (connect to close) must not exceed it"
    )
    expect: list[Expectation] = Field(
        default_factory=list, description="criteria that decide each step (when: end only)"
    )

    @model_validator(mode="after")
    def _criteria_are_per_step(self) -> SweepSpec:
        for i, exp in enumerate(self.expect):
            if exp.when != "end":
                raise ValueError(
                    f"sweep.expect[{i}] is checked {exp.when!r}, but a sweep judges each step "
                    "as a whole: use when: end"
                )
        if any(b <= a for a, b in zip(self.rates, self.rates[1:], strict=False)):
            raise ValueError(f"sweep.rates must rise step by step, got {self.rates}")
        return self


class Variant(Strict):
    """A named change to the scenario, typically a mitigation its seed discusses.

    ``patch`` is a partial scenario merged into this one: mappings merge key by key, any
    other value (lists included, e.g. ``expect``) replaces. ``chaos run S --variant NAME``
    runs the patched scenario; ``chaos compare`` shows it beside the plain run.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
    description: str = ""
    patch: dict[str, object] = Field(default_factory=dict)
    mitigation: bool = Field(
        default=True,
        description=(
            "false: not a fix but another form of the pathology (another proxy, kernel "
            "defaults, a setting it follows); the plain signature need not fail on it"
        ),
    )


class Control(Variant):
    """The scenario with its causal ingredient removed or replaced (a negative control).

    A signature proves its mechanism only if it fails when the cause is gone: a control is
    run like a variant (``--variant NAME``) but keeps the plain expectations, and ``fails``
    names the clauses (by label) that must fail on it. ``chaos run`` of a control therefore
    exits 10; CI requires exactly that.
    """

    fails: list[str] = Field(
        min_length=1, description="labels of the plain expectations that must fail on it"
    )


# --- remote: run against a compose stack or real hosts -----------------------------------

Role = Literal["client", "gateway", "proxy", "origin"]


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


def _agent_base(value: str) -> str:
    # The agent serves plain HTTP; the role's target is appended by the run.
    scheme, sep, rest = value.partition("://")
    if scheme != "http" or not sep or not rest or "/" in rest.rstrip("/"):
        raise ValueError(f"{value!r} is not an agent URL such as http://HOST:7700")
    return value.rstrip("/")


HostPort = Annotated[str, AfterValidator(_host_port)]
AgentBase = Annotated[str, AfterValidator(_agent_base)]


class RemoteSpec(Strict):
    """Run against machines that already exist (the compose stack, or real hosts) instead of
    a namespace lab: the load goes to ``target``, faults aimed at a role go to that role's
    agent (``chaos agent``), and each host's ``chaos collect --sink`` writes its own samples.
    """

    target: HostPort = Field(description="HOST:PORT the load connects to: the proxy under test")
    protocol: Literal["http", "raw"] = Field(default="http", description="the origin's protocol")
    agents: dict[Role, AgentBase] = Field(
        default_factory=dict,
        description="agent base URL per role; a fault's target ROLE[:PATTERN] goes there",
    )
    workers: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1, description="Locust workers that join the run's master (other processes)"
    )
    workers_from: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="a host name with one address per worker (compose's service name, e.g. "
        "`worker`): the run waits for as many workers as it resolves to, so `docker compose "
        "up --scale worker=N` needs no other change; replaces `workers`",
    )
    master_bind: HostPort = Field(
        default="0.0.0.0:5557", description="where the Locust master listens for workers"
    )
    wait: Duration = Field(
        default=60.0, description="how long to wait for agents, target and workers at start"
    )


# --- the scenario ------------------------------------------------------------------------


class Scenario(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    duration: Duration = 10.0
    lab: LabSpec = Field(default_factory=LabSpec)
    load: LoadSpec = Field(default_factory=LoadSpec)
    faults: list[FaultSpec] = Field(default_factory=list)
    collectors: CollectorsSpec = Field(default_factory=CollectorsSpec)
    sink: SinkSpec = Field(default_factory=SinkSpec)
    expect: list[Expectation] = Field(default_factory=list)
    sweep: SweepSpec | None = Field(
        default=None, description="capacity criteria and default steps for `chaos sweep`"
    )
    variants: list[Variant] = Field(default_factory=list)
    controls: list[Control] = Field(
        default_factory=list,
        description="negative controls: the cause removed, on which the signature must fail",
    )
    variant: str = Field(default="", description="set by --variant: the variant applied")
    remote: RemoteSpec | None = Field(
        default=None, description="run against existing hosts (agents, a proxy) instead of a lab"
    )

    @field_validator("duration")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("duration must be > 0")
        return value

    @model_validator(mode="after")
    def _protocols_agree(self) -> Scenario:
        origin, proxy = self.lab.origin, self.lab.proxy
        if proxy.mode == "http" and proxy.kind != "external" and origin.protocol != "http":
            raise ValueError(
                "lab.proxy.mode is http but lab.origin.protocol is raw: use proxy mode tcp "
                "for the raw protocol"
            )
        if origin_tls_needs_http(self.lab.model_dump()):
            raise ValueError(ORIGIN_TLS_NEEDS_HTTP)  # checks.plan_problems says it at its line
        if self.load.user == "http" and origin.protocol != "http":
            raise ValueError("load.user http needs lab.origin.protocol http")
        if self.lab.gateway.intercept and proxy.transparent:
            raise ValueError("use either lab.gateway.intercept or lab.proxy.transparent")
        if self.lab.gateway.intercept and proxy.kind == "external":
            raise ValueError("lab.gateway.intercept needs the lab's own proxy (no gateway with "
                             "proxy.kind external)")
        return self

    @property
    def load_tls(self) -> LoadTls | None:
        """The load's TLS settings, None for plain TCP (``load.tls`` resolved)."""
        tls = self.load.tls
        if tls is None:
            tls = self.remote is None and self.lab.proxy.tls
        if tls is True:
            return LoadTls()
        return tls or None

    @model_validator(mode="after")
    def _tls_agrees(self) -> Scenario:
        if self.load_tls is None:
            return self
        if self.load.user != contract.RAW:
            raise ValueError(TLS_NEEDS_RAW)
        if self.load.teardown == "half-close":
            raise ValueError(
                "teardown: half-close with TLS: a close_notify or a bare FIN from the client "
                "ends the proxy's TLS session, so no response would come; use wait-server-fin"
            )
        proxy = self.lab.proxy
        own_plain = proxy.kind != "external" and not proxy.tls and proxy.config is None
        if self.remote is None and own_plain:
            raise ValueError(
                "load.tls: the lab's proxy does not terminate TLS: set lab.proxy.tls: true, "
                "or remove load.tls"
            )
        return self

    @model_validator(mode="after")
    def _controls_name_clauses(self) -> Scenario:
        labels = {exp.label for exp in self.expect if exp.label}
        for i, control in enumerate(self.controls):
            if "expect" in control.patch:
                raise ValueError(
                    f"controls[{i}] ({control.name}) patches expect: a control is judged by "
                    "the plain expectations; put the clause in variants instead"
                )
            unknown = [label for label in control.fails if label not in labels]
            if unknown:
                raise ValueError(
                    f"controls[{i}] ({control.name}).fails names {unknown[0]!r}, which is "
                    "not the label of any expectation"
                )
        return self

    @model_validator(mode="after")
    def _remote_is_consistent(self) -> Scenario:
        remote = self.remote
        if remote is None:
            return self
        if "lab" in self.model_fields_set:
            raise ValueError("a scenario with remote: builds no lab: remove the lab section")
        if self.load.user == "http" and remote.protocol != "http":
            raise ValueError("load.user http needs remote.protocol http")
        for i, spec in enumerate(self.faults):
            role = spec.target.split(":", 1)[0]
            if role in ("http", "https"):
                continue  # an agent URL of its own
            if role not in remote.agents:
                raise ValueError(
                    f"faults[{i}].target {spec.target!r}: remote runs reach a role through its "
                    f"agent; add remote.agents.{role}, or give an agent URL"
                )
        for i, exp in enumerate(self.expect):
            # Collectors on the remote hosts write to InfluxDB, not to this run's samples.lp.
            if exp.metric.split(".", 1)[0] not in ("load", "load_failures"):
                raise ValueError(
                    f"expect[{i}]: a remote run checks only load.* and load_failures.* metrics "
                    "(the collectors' samples go from each host to InfluxDB)"
                )
        return self

    @model_validator(mode="after")
    def _expectations_have_phases(self) -> Scenario:
        for i, exp in enumerate(self.expect):
            if exp.when != "end" and not self.faults:
                raise ValueError(
                    f"expect[{i}] is checked {exp.when!r} a fault, but the scenario has no "
                    "faults: use when: end, or add a fault"
                )
            if exp.fault is not None and exp.fault >= len(self.faults):
                raise ValueError(
                    f"expect[{i}].fault is {exp.fault}, but there are only "
                    f"{len(self.faults)} faults (counted from 0)"
                )
            if uses_baseline(exp) and (exp.when == "baseline" or not self.faults):
                raise ValueError(
                    f"expect[{i}] uses baseline, which needs a fault and a phase after it"
                )
        return self
