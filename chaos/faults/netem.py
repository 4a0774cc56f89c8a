"""netem: delay, loss, duplication, reordering, corruption and rate limits, through pyroute2.

One fault type, ``netem``, on one interface of the target's namespace::

    {delay_ms: 100, jitter_ms: 10, distribution: normal, loss: 1}
    {gemodel: {p: 1, r: 25}, direction: ingress}
    {delay_ms: 200, scope: {address: 198.18.3.2, port: 8080}}

Layout in the kernel (every qdisc we add has major ``ca05`` or ``ca06``, so ``tc qdisc`` shows
what chaos made):

- egress: ``netem ca05:`` as the interface's root qdisc;
- egress with a ``scope``: ``prio ca05:`` (2 bands, every priority mapped to band 1) as root,
  ``netem ca06:`` under band 2 (``ca05:2``), and a u32 filter that steers only the matching
  IPv4 packets (destination address/port) to band 2; everything else goes through band 1's
  plain FIFO, unaffected;
- ingress: an ifb device (``ifb-<fault id>``) carrying the egress layout above (matching on the
  *source* address/port, since those packets come from the peer), an ``ingress`` qdisc on the
  interface and a match-all u32 filter whose ``mirred`` action redirects every incoming packet
  to the ifb. The ifb side is built completely before the redirect exists, so a half-applied
  fault never blackholes traffic.

Only a *default* root qdisc (handle 0: noqueue, pfifo_fast, mq, fq_codel as the kernel
attached them) is replaced, and only when no ingress/clsact qdisc exists for an ingress
fault: deleting ours then restores the kernel's default exactly. An interface that already
carries a configured qdisc tree is refused rather than destroyed. The snapshot goes into the
handle (so into the ledger).

pyroute2 0.9's netem encoder lacks the delay distribution table, Gilbert-Elliott loss and the
64-bit latency attributes, so the qdisc message is built here from its own netlink classes;
prio, u32, ingress and mirred use pyroute2's ``tc()`` as they are.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import statistics
import struct
from collections.abc import Callable, Iterator
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_INGRESS, TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from chaos.errors import FaultError
from chaos.faults.base import Fault, Handle, HandleData, Params, new_handle_id
from chaos.kernel import netns

ROOT_HANDLE = 0xCA050000  # "ca05:" the root we add (netem, or prio when scoped)
NETEM_CHILD_HANDLE = 0xCA060000  # "ca06:" the netem under prio band 2 when scoped
SCOPED_BAND = ROOT_HANDLE | 2  # class ca05:2
INGRESS_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
FILTER_PRIO = 1
U32_MAX = 0xFFFFFFFF
#: netem's distribution tables are s16 values scaled by NETEM_DIST_SCALE (include/uapi).
DIST_SCALE = 8192
DIST_SIZE = 4096

Percent = Annotated[float, Field(ge=0, le=100)]
Correlation = Annotated[float, Field(ge=0, le=100, description="percent")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GilbertElliott(_Strict):
    """Gilbert-Elliott loss, as ``tc ... loss gemodel p r 1-h 1-k`` (all percentages)."""

    p: Percent = Field(description="good → bad state transition probability")
    r: Percent = Field(100, description="bad → good state transition probability")
    one_minus_h: Percent = Field(100, description="loss probability in the bad state (1-h)")
    one_minus_k: Percent = Field(0, description="loss probability in the good state (1-k)")


class Scope(_Strict):
    """Only packets to (egress) or from (ingress) this IPv4 peer are affected."""

    address: ipaddress.IPv4Network | None = Field(
        None, description="peer address or network (IPv4), e.g. 198.18.3.2 or 198.18.3.0/24"
    )
    port: int | None = Field(None, ge=1, le=65535, description="peer TCP/UDP port")

    @model_validator(mode="after")
    def _something(self) -> Scope:
        if self.address is None and self.port is None:
            raise ValueError("a scope needs an address, a port, or both")
        return self


class NetemParams(Params):
    interface: str | None = Field(
        None, description="interface in the target's namespace (default: its only lab link)"
    )
    direction: Literal["egress", "ingress"] = Field(
        "egress", description="egress, or ingress through an ifb device"
    )
    delay_ms: float = Field(0, ge=0, le=3_600_000, description="added delay, milliseconds")
    jitter_ms: float = Field(0, ge=0, le=3_600_000, description="delay variation, milliseconds")
    delay_correlation: Correlation = 0
    distribution: Literal["uniform", "normal", "pareto", "paretonormal"] = Field(
        "uniform", description="jitter distribution (uniform is the kernel's default)"
    )
    loss: Percent = Field(0, description="random loss, percent")
    loss_correlation: Correlation = 0
    gemodel: GilbertElliott | None = Field(None, description="Gilbert-Elliott loss instead")
    duplicate: Percent = Field(0, description="percent of packets sent twice")
    duplicate_correlation: Correlation = 0
    reorder: Percent = Field(0, description="percent of packets sent at once (needs delay)")
    reorder_correlation: Correlation = 0
    gap: int = Field(0, ge=0, description="reorder every gap-th packet (0: as tc, 1)")
    corrupt: Percent = Field(0, description="percent of packets with one bit flipped")
    corrupt_correlation: Correlation = 0
    rate_kbit: int | None = Field(None, ge=1, description="rate limit, kbit/s")
    limit: int = Field(1000, ge=1, description="netem queue length, packets")
    scope: Scope | None = Field(None, description="affect only traffic with this peer")

    @model_validator(mode="after")
    def _consistent(self) -> NetemParams:
        # The same rules tc(8) enforces, so a scenario means what it would mean to tc.
        effects = (
            self.delay_ms, self.loss, self.gemodel, self.duplicate, self.reorder,
            self.corrupt, self.rate_kbit,
        )  # fmt: skip
        if not any(effects):
            raise ValueError("netem needs at least one effect (delay_ms, loss, gemodel, ...)")
        needs = [
            (self.jitter_ms and not self.delay_ms, "jitter_ms needs delay_ms"),
            (self.distribution != "uniform" and not self.jitter_ms, "distribution needs jitter_ms"),
            (self.delay_correlation and not self.jitter_ms, "delay_correlation needs jitter_ms"),
            (self.loss and self.gemodel, "loss and gemodel exclude each other"),
            (self.loss_correlation and not self.loss, "loss_correlation needs loss"),
            (
                self.duplicate_correlation and not self.duplicate,
                "duplicate_correlation needs duplicate",
            ),
            (self.reorder and not self.delay_ms, "reorder needs delay_ms"),
            (
                (self.gap or self.reorder_correlation) and not self.reorder,
                "gap and reorder_correlation need reorder",
            ),
            (self.corrupt_correlation and not self.corrupt, "corrupt_correlation needs corrupt"),
        ]
        problems = [why for bad, why in needs if bad]
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- the netlink message -----------------------------------------------------------------


class _NetemQdiscMsg(nlmsg):
    """A tcmsg whose TCA_OPTIONS is the full netem option set (pyroute2's lacks several).

    Not a subclass of pyroute2's tcmsg: pyroute2 caches the compiled attribute map per class
    hierarchy, and once a tcmsg has been parsed a subclass would silently encode with
    tcmsg's map (and pyroute2's netem option names).
    """

    fields = tcmsg.fields
    nla_map = (
        ("TCA_UNSPEC", "none"),
        ("TCA_KIND", "asciiz"),
        ("TCA_OPTIONS", "netem_options"),
    )

    class netem_options(nla):
        # struct tc_netem_qopt, then attributes (the kernel parses it "nested compat").
        fields = (
            ("latency", "I"),  # psched ticks (TCA_NETEM_LATENCY64 carries ns and wins)
            ("limit", "I"),
            ("loss", "I"),
            ("gap", "I"),
            ("duplicate", "I"),
            ("jitter", "I"),
        )
        nla_map = (
            (1, "TCA_NETEM_CORR", "netem_corr"),
            (2, "TCA_NETEM_DELAY_DIST", "cdata"),  # __s16 table
            (3, "TCA_NETEM_REORDER", "netem_prob"),
            (4, "TCA_NETEM_CORRUPT", "netem_prob"),
            (5, "TCA_NETEM_LOSS", "netem_loss"),
            (6, "TCA_NETEM_RATE", "netem_rate"),
            (8, "TCA_NETEM_RATE64", "uint64"),
            (10, "TCA_NETEM_LATENCY64", "int64"),
            (11, "TCA_NETEM_JITTER64", "int64"),
        )

        class netem_corr(nla):
            fields = (("delay_corr", "I"), ("loss_corr", "I"), ("dup_corr", "I"))

        class netem_prob(nla):
            fields = (("probability", "I"), ("correlation", "I"))

        class netem_rate(nla):
            fields = (
                ("rate", "I"),
                ("packet_overhead", "i"),
                ("cell_size", "I"),
                ("cell_overhead", "i"),
            )

        class netem_loss(nla):
            nla_map = ((2, "NETEM_LOSS_GE", "gemodel"),)

            class gemodel(nla):
                fields = (("p", "I"), ("r", "I"), ("h", "I"), ("k1", "I"))


def _prob(percent: float) -> int:
    """A percentage as the kernel's u32 probability (100 % → 2**32 - 1)."""
    return round(percent / 100 * U32_MAX)


def netem_options(p: NetemParams) -> dict[str, Any]:
    """The TCA_OPTIONS value for ``p`` (pure: tested without a kernel)."""
    latency_ns, jitter_ns = round(p.delay_ms * 1e6), round(p.jitter_ms * 1e6)
    reorder_gap = p.gap or (1 if p.reorder else 0)  # tc's default: reorder needs gap >= 1
    attrs: list[list[Any]] = [
        ["TCA_NETEM_LATENCY64", latency_ns],
        ["TCA_NETEM_JITTER64", jitter_ns],
    ]
    if p.delay_correlation or p.loss_correlation or p.duplicate_correlation:
        corr = {
            "delay_corr": _prob(p.delay_correlation),
            "loss_corr": _prob(p.loss_correlation),
            "dup_corr": _prob(p.duplicate_correlation),
        }
        attrs.append(["TCA_NETEM_CORR", corr])
    if p.distribution != "uniform":  # no table: the kernel draws jitter uniformly
        table = distribution_table(p.distribution)
        attrs.append(["TCA_NETEM_DELAY_DIST", struct.pack(f"={len(table)}h", *table)])
    if p.reorder:
        reorder = {"probability": _prob(p.reorder), "correlation": _prob(p.reorder_correlation)}
        attrs.append(["TCA_NETEM_REORDER", reorder])
    if p.corrupt:
        corrupt = {"probability": _prob(p.corrupt), "correlation": _prob(p.corrupt_correlation)}
        attrs.append(["TCA_NETEM_CORRUPT", corrupt])
    if p.gemodel is not None:
        ge = p.gemodel
        model = {
            "p": _prob(ge.p),
            "r": _prob(ge.r),
            "h": U32_MAX - _prob(ge.one_minus_h),  # the kernel takes h, tc's user gives 1-h
            "k1": _prob(ge.one_minus_k),
        }
        attrs.append(["TCA_NETEM_LOSS", {"attrs": [["NETEM_LOSS_GE", model]]}])
    if p.rate_kbit:
        rate_bytes = p.rate_kbit * 125
        attrs.append(["TCA_NETEM_RATE", {"rate": min(rate_bytes, U32_MAX)}])
        if rate_bytes > U32_MAX:
            attrs.append(["TCA_NETEM_RATE64", rate_bytes])
    return {
        # 1 psched tick = 64 ns (PSCHED_SHIFT); the 32-bit fields saturate, the 64-bit win.
        "latency": min(latency_ns >> 6, U32_MAX),
        "jitter": min(jitter_ns >> 6, U32_MAX),
        "limit": p.limit,
        "loss": _prob(p.loss),
        "gap": reorder_gap,
        "duplicate": _prob(p.duplicate),
        "attrs": attrs,
    }


@cache
def distribution_table(name: str) -> tuple[int, ...]:
    """netem's delay distribution table, as iproute2's normal.c/pareto.c/paretonormal.c
    generate it (``/usr/lib/*/tc/NAME.dist``): the inverse CDF at 4096 evenly spaced
    quantiles, scaled by 8192, as s16. Computed here so no iproute2 data files are needed."""

    def clip(value: float) -> int:
        return max(-32768, min(32767, round(value)))

    def normal(i: int) -> float:  # normal.c: the x whose CDF rounds to quantile i/16384
        q = (4 * i + 0.5) / 16384
        return statistics.NormalDist().inv_cdf(q) * DIST_SCALE

    def pareto(i: int) -> float:  # pareto.c, a = 3, shifted and scaled to mean 0
        u = (65536 - 16 * i) / 65536
        return (1.0 / math.pow(u, 1 / 3) - 1.5) * (4 / 3) * DIST_SCALE

    def paretonormal(i: int) -> float:  # paretonormal.c: (normal + 3 * pareto) / 4, in C ints
        return math.trunc((round(normal(i)) + 3 * clip(pareto(i))) / 4)

    shape: Callable[[int], float] = {
        "normal": normal,
        "pareto": pareto,
        "paretonormal": paretonormal,
    }[name]
    return tuple(clip(shape(i)) for i in range(DIST_SIZE))


# --- the fault -----------------------------------------------------------------------------

Step = tuple[str, Callable[[Any], None]]  # (what, fn(ipr))


def _u32_keys(scope: Scope, direction: str) -> list[str]:
    """u32 keys (pyroute2's "value/mask+offset" byte syntax) matching the peer.

    Offsets are into the IPv4 header (12: source, 16: destination) and, for ports, just past a
    20-byte header (20: source port, 22: destination port), as tc's ``match ip dport`` does.
    """
    egress = direction == "egress"
    keys = []
    if scope.address is not None:
        net = scope.address
        offset = 16 if egress else 12
        keys.append(f"0x{int(net.network_address):08x}/0x{int(net.netmask):08x}+{offset}")
    if scope.port is not None:
        keys.append(f"0x{scope.port:04x}/0xffff+{22 if egress else 20}")
    return keys


def _root_qdisc(ipr: Any, index: int) -> dict[str, Any] | None:
    return _qdisc_where(ipr, index, TC_H_ROOT)


def _qdisc_where(ipr: Any, index: int, parent: int) -> dict[str, Any] | None:
    for msg in ipr.get_qdiscs(index=index):
        if msg["index"] == index and msg["parent"] == parent:
            return {"kind": msg.get_attr("TCA_KIND"), "handle": msg["handle"]}
    return None


def _link_index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _gone(exc: NetlinkError) -> bool:
    """Errors that mean "already not there", which revert treats as done."""
    return exc.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL)


class NetemHandle(HandleData):
    """The link shaped (its index, so a new link of the same name is never touched), the
    qdiscs found there before (what revert must leave), the params as JSON (for the ledger
    and a crash test's replay of ``steps``), the u32 keys of a scope, and the ifb of an
    ingress fault."""

    netns: str | None
    ifname: str
    ifindex: int
    direction: str
    root_before: dict[str, Any] | None
    ingress_before: dict[str, Any] | None
    root_handle: int
    netem_handle: int
    params: dict[str, Any]
    u32_keys: list[str] | None
    ifb: str | None


class Netem(Fault):
    handle_model = NetemHandle
    kind = "netem"
    params_model = NetemParams
    #: Ingress additionally needs ``ifb``; check_target probes it for ingress faults only,
    #: so an egress netem runs on hosts without the ifb module.
    features: ClassVar[tuple[str, ...]] = ("netem",)
    params: NetemParams

    def required_features(self) -> tuple[str, ...]:
        return ("netem", "ifb") if self.params.direction == "ingress" else ("netem",)

    # -- validate / prepare ------------------------------------------------------------------

    def _fail(self, what: str, hint: str) -> FaultError:
        return FaultError(f"fault netem on {self.target.name}: {what}", hint)

    def check_target(self) -> None:
        if self.target.netns is None:
            raise self._fail(
                "refusing to shape the host namespace's traffic",
                "aim it at a role of the lab (client, gateway, proxy, origin)",
            )
        self.interface()  # raises when it cannot be chosen
        if self.params.direction == "ingress":
            from chaos import capabilities  # a probe namespace; only ingress needs it

            capabilities.require({"ifb"})

    def interface(self) -> str:
        links = self.target.links
        if self.params.interface is not None:
            if links and self.params.interface not in links:
                raise self._fail(
                    f"no interface {self.params.interface!r} in namespace {self.target.netns}",
                    f"interfaces there: {', '.join(links)}",
                )
            return self.params.interface
        if len(links) != 1:
            raise self._fail(
                f"namespace {self.target.netns} has {len(links)} lab links "
                f"({', '.join(links) or 'none'})",
                "choose one with params.interface",
            )
        return links[0]

    def prepare(self) -> Handle:
        ns, ifname = self.target.netns, self.interface()
        with netns.ipr(ns) as ipr:
            index = _link_index(ipr, ifname)
            if index is None:
                raise self._fail(f"no interface {ifname} in namespace {ns}", "is the lab up?")
            root = _root_qdisc(ipr, index)
            ingress = _qdisc_where(ipr, index, TC_H_INGRESS)
        ingress_mode = self.params.direction == "ingress"
        if ingress_mode and ingress is not None:
            raise self._fail(
                f"{ifname} already has an {ingress['kind']} qdisc",
                "chaos only adds ingress netem where no ingress/clsact qdisc exists",
            )
        if not ingress_mode and root is not None and root["handle"] != 0:
            raise self._fail(
                f"{ifname} already has a configured root qdisc {root['kind']} "
                f"{root['handle'] >> 16:x}: (another netem fault, or someone's tc setup)",
                "chaos replaces only the kernel's default qdisc; remove that one first",
            )
        handle_id = new_handle_id()
        state = NetemHandle(
            netns=ns,
            ifname=ifname,
            ifindex=index,
            direction=self.params.direction,
            root_before=root,  # the snapshot: what revert must leave
            ingress_before=ingress,
            root_handle=ROOT_HANDLE,
            netem_handle=NETEM_CHILD_HANDLE if self.params.scope else ROOT_HANDLE,
            params=self.params.model_dump(mode="json"),
            u32_keys=_u32_keys(self.params.scope, self.params.direction)
            if self.params.scope
            else None,
            ifb=f"ifb-{handle_id[:11]}" if ingress_mode else None,
        )
        return self.handle(state, handle_id)

    # -- apply -------------------------------------------------------------------------------

    @classmethod
    def steps(cls, handle: Handle, params: NetemParams | None = None) -> Iterator[Step]:
        """The kernel changes, in order. ``apply`` runs them all; a crash between any two
        leaves state that ``revert`` removes (the contract tests stop after each step).
        ``params``: the fault's, parsed once (else read back from the handle)."""
        data = NetemHandle.of(handle)
        ifb = data.ifb
        shaped = ifb if ifb else data.ifname  # the device whose root we replace
        options = netem_options(params or NetemParams.model_validate(data.params))

        def index_of(ipr: Any, name: str) -> int:
            index = _link_index(ipr, name)
            if index is None:
                raise FaultError(f"netem: interface {name} vanished in {data.netns}")
            return index

        def create_ifb(ipr: Any) -> None:
            ipr.link("add", ifname=ifb, kind="ifb")
            ipr.link("set", index=index_of(ipr, ifb), state="up")

        def add_prio(ipr: Any) -> None:  # band 1 takes every priority; only the filter → 2
            ipr.tc(
                "add", "prio", index_of(ipr, shaped), handle=ROOT_HANDLE, bands=2, priomap=[0] * 16
            )

        def add_netem(ipr: Any) -> None:
            scoped = data.u32_keys is not None
            _add_netem(
                ipr,
                index_of(ipr, shaped),
                NETEM_CHILD_HANDLE if scoped else ROOT_HANDLE,
                SCOPED_BAND if scoped else TC_H_ROOT,
                options,
            )

        def add_scope_filter(ipr: Any) -> None:
            ipr.tc(
                "add-filter", "u32", index_of(ipr, shaped), parent=ROOT_HANDLE,
                prio=FILTER_PRIO, protocol=ETH_P_IP, target=SCOPED_BAND, keys=data.u32_keys,
            )  # fmt: skip

        def add_ingress(ipr: Any) -> None:
            ipr.tc("add", "ingress", index_of(ipr, data.ifname))

        def redirect_to_ifb(ipr: Any) -> None:  # match-all u32 + mirred egress redirect
            action = {
                "kind": "mirred",
                "direction": "egress",
                "action": "redirect",
                "ifindex": index_of(ipr, ifb),
            }
            ipr.tc(
                "add-filter", "u32", index_of(ipr, data.ifname), parent=INGRESS_HANDLE,
                prio=FILTER_PRIO, protocol=ETH_P_ALL, target=0x1, keys=["0x0/0x0+0"],
                action=action,
            )  # fmt: skip

        if ifb:
            yield f"create {ifb}", create_ifb
        if data.u32_keys is not None:
            yield "add the prio root", add_prio
        yield "add netem", add_netem
        if data.u32_keys is not None:
            yield "add the scope filter", add_scope_filter
        if ifb:
            yield "add an ingress qdisc", add_ingress
            yield f"redirect ingress to {ifb}", redirect_to_ifb

    def apply(self, handle: Handle) -> None:
        data = NetemHandle.of(handle)
        with netns.ipr(data.netns) as ipr:
            for what, step in self.steps(handle, self.params):
                try:
                    step(ipr)
                except NetlinkError as exc:
                    raise FaultError(
                        f"fault netem on {self.target.name}: the kernel refused to {what} "
                        f"on {data.ifname} in {data.netns}: {exc}",
                        "check `chaos doctor` (netem, ifb) and the fault's parameters",
                    ) from exc

    # -- revert ------------------------------------------------------------------------------

    @classmethod
    def revert(cls, handle: Handle) -> None:
        data = NetemHandle.of(handle)
        ns = data.netns
        if ns is not None and not netns.exists(ns):
            return  # the namespace, and every qdisc and ifb in it, is gone
        with netns.ipr(ns) as ipr:
            index = _link_index(ipr, data.ifname)
            if index != data.ifindex:
                index = None  # gone, or a new link with the same name: not ours to touch
            if index is not None and data.ifb and data.ingress_before is None:
                # First stop redirecting, then remove the ifb (which takes its qdiscs along).
                cls._delete_qdisc(ipr, index, TC_H_INGRESS, INGRESS_HANDLE, ("ingress",))
            if index is not None and not data.ifb:
                cls._delete_qdisc(ipr, index, TC_H_ROOT, ROOT_HANDLE, ("netem", "prio"))
            ifb = _link_index(ipr, data.ifb) if data.ifb else None
            if ifb is not None:
                try:
                    ipr.link("del", index=ifb)
                except NetlinkError as exc:
                    if not _gone(exc):
                        raise

    @staticmethod
    def _delete_qdisc(
        ipr: Any, index: int, parent: int, handle: int, kinds: tuple[str, ...]
    ) -> None:
        """Delete the qdisc at ``parent`` only if it is still the one we added."""
        current = _qdisc_where(ipr, index, parent)
        if current is None or current["handle"] != handle or current["kind"] not in kinds:
            return
        try:
            ipr.tc("del", index=index, handle=handle, parent=parent)
        except NetlinkError as exc:
            if not _gone(exc):
                raise


def _add_netem(ipr: Any, index: int, handle: int, parent: int, options: dict[str, Any]) -> None:
    msg = _NetemQdiscMsg()
    msg["family"] = 0
    msg["index"] = index
    msg["handle"] = handle
    msg["parent"] = parent
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", options]]
    msg["header"]["type"] = RTM_NEWQDISC
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    # The batch call sends a prepared message as is and raises the kernel's NetlinkError
    # (the sync nlm_request of pyroute2 0.9.7 fails on IPRoute with KeyError 'nlm_generator').
    ipr.nlm_request_batch([msg])
