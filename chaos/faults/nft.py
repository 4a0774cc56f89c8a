"""Packet filters with nftables, in a table each fault owns, inside the target's namespace.

Three fault types:

``nft-filter``
    drop, or reject (ICMP port-unreachable, or a TCP reset), the packets that match every
    given condition: TCP flags, direction, addresses, ports and a probability. Seed 001's
    ``iptables -p tcp --tcp-flags ACK,FIN ACK -j REJECT`` is
    ``{action: reject, tcp_flags: "ack,fin ack"}``; a blackhole toward the origin is
    ``{daddr: 198.18.3.2, direction: [output, forward]}``.
``nft-loss``
    random loss by probability, per direction, for kernels without sch_netem. The scenario
    chooses it explicitly: netem loss never falls back to it silently.
``nft-mangle``
    a middlebox that rewrites a TCP sequence or acknowledgement number wrongly (seed 004's
    load balancer): the matching packets pass with ``field`` XORed with ``xor`` (a number
    off by a fixed pattern, as a broken sequence translation makes it) or replaced by
    ``set``. nftables fixes the TCP checksum, so the receiver judges the number, not the
    checksum. Its default direction is ``forward``: a middlebox rewrites what it routes.

Note on ``output``: a packet that the *local* TCP stack sends and nftables drops in the
output hook is not lost on the wire: the stack gets an error back (EPERM), keeps the segment
and sends it again at the next opportunity, without counting a retransmission. Measured here:
30 % output loss on a 400 kB transfer gave 1 retransmitted segment. For loss as a network
causes it, drop on ``input`` of the receiving namespace (the default of ``nft-loss``) or on
``forward`` in the gateway or proxy namespace.

Each applied fault is one table ``inet chaos_<fault id>`` with one base chain per direction
(hooks ``input``, ``output``, ``forward``; priority ``filter``, ``mangle`` for nft-mangle),
loaded atomically with ``nft -f -`` in the namespace. Revert deletes the table (``add`` +
``delete`` in one transaction, so a table that is already gone is not an error), and does
nothing when the namespace itself is gone. Rule text is checked with ``nft -c`` when the
fault is validated.

``tcp_flags`` is a preset — ``syn`` (an opening SYN, not a SYN-ACK), ``syn-ack``,
``pure-ack`` (ACK without SYN, FIN, RST or PSH: the bare ACKs of a teardown), ``fin``,
``rst`` — or iptables' ``MASK SET`` form: the flags in MASK are examined and those in SET
must be the ones set (``"ack,fin ack"``: ACK set, FIN clear).
"""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from chaos.errors import FaultError
from chaos.faults.base import Fault, Handle, HandleData, Params, new_handle_id
from chaos.kernel import netns

Direction = Literal["input", "output", "forward"]

TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr")
FLAG_PRESETS: dict[str, str] = {
    "syn": "syn,ack syn",
    "syn-ack": "syn,ack syn,ack",
    "pure-ack": "syn,fin,rst,psh,ack ack",
    "fin": "fin fin",
    "rst": "rst rst",
}
FAMILY = "inet"
#: numgen's modulus: probabilities have a resolution of 0.01 %.
NUMGEN_MOD = 10000


def parse_tcp_flags(text: str) -> tuple[list[str], list[str]]:
    """A preset or ``MASK SET`` → (examined flags, flags that must be set)."""
    spec = FLAG_PRESETS.get(text.strip().lower(), text.strip().lower())
    parts = spec.split()
    if len(parts) != 2:
        raise ValueError(
            f"{text!r}: use a preset ({', '.join(FLAG_PRESETS)}) or 'MASK SET' like 'ack,fin ack'"
        )
    mask = parts[0].split(",")
    want = [] if parts[1] == "none" else parts[1].split(",")
    unknown = sorted(set(mask + want) - set(TCP_FLAGS))
    if unknown:
        raise ValueError(f"unknown TCP flag(s) {', '.join(unknown)}; known: {', '.join(TCP_FLAGS)}")
    if not set(want) <= set(mask):
        raise ValueError(f"{text!r}: every flag in SET must also be in MASK")
    return mask, want


def _port(value: int | str | None) -> int | str | None:
    if value is None:
        return None
    low, _, high = str(value).partition("-")
    try:
        bounds = [int(low)] + ([int(high)] if high else [])
    except ValueError:
        raise ValueError(f"{value!r} is not a port or a range like 1000-2000") from None
    if not all(1 <= p <= 65535 for p in bounds) or bounds != sorted(bounds):
        raise ValueError(f"{value!r}: ports are 1-65535, ranges low-high")
    return value


def _address(value: str | None) -> str | None:
    if value is not None:
        ipaddress.ip_network(value, strict=False)  # ValueError names the problem
    return value


class MatchParams(Params):
    """What every nftables fault matches on."""

    direction: list[Direction] = Field(
        default_factory=lambda: ["input"],
        description="hooks to filter in: input, output, forward (one or a list)",
    )
    saddr: str | None = Field(default=None, description="source address or CIDR")
    daddr: str | None = Field(default=None, description="destination address or CIDR")
    probability: float = Field(
        default=100.0, gt=0, le=100, description="percent of matching packets hit (numgen)"
    )

    @field_validator("direction", mode="before")
    @classmethod
    def _one_or_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("direction")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give each direction once, at least one")
        return value

    @field_validator("saddr", "daddr")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        return _address(value)


class TcpMatchParams(MatchParams):
    """Match fields of the faults that look into the TCP header."""

    tcp_flags: str | None = Field(
        default=None,
        description="syn | syn-ack | pure-ack | fin | rst, or 'MASK SET' (e.g. 'ack,fin ack')",
    )
    sport: int | str | None = Field(default=None, description="TCP source port or low-high")
    dport: int | str | None = Field(default=None, description="TCP destination port or low-high")

    @field_validator("tcp_flags")
    @classmethod
    def _flags(cls, value: str | None) -> str | None:
        if value is not None:
            parse_tcp_flags(value)
        return value

    @field_validator("sport", "dport")
    @classmethod
    def _ports(cls, value: int | str | None) -> int | str | None:
        return _port(value)


class FilterParams(TcpMatchParams):
    action: Literal["drop", "reject"] = Field(default="drop", description="drop or reject")
    reject_with: Literal["icmp", "tcp-reset"] = Field(
        default="icmp", description="for reject: ICMP port-unreachable (as iptables) or TCP RST"
    )


U32_MAX = 0xFFFFFFFF


class MangleParams(TcpMatchParams):
    direction: list[Direction] = Field(
        default_factory=lambda: ["forward"],
        description="hooks to rewrite in: forward (a middlebox, the default), input, output",
    )
    field: Literal["seq", "ack"] = Field(description="the number to rewrite: seq or ack")
    xor: int | None = Field(
        default=None, ge=1, le=U32_MAX, description="XOR the number with this (1..2^32-1)"
    )
    set: int | None = Field(
        default=None, ge=0, le=U32_MAX, description="or replace it with this (0..2^32-1)"
    )

    @model_validator(mode="after")
    def _one_rewrite(self) -> MangleParams:
        if (self.xor is None) == (self.set is None):
            raise ValueError("give exactly one of xor and set")
        return self


class LossParams(MatchParams):
    direction: list[Direction] = Field(
        default_factory=lambda: ["input"],
        description="hooks to drop in: input, output, forward (see the module's note on output)",
    )
    probability: float = Field(gt=0, le=100, description="percent of packets dropped")


def _addr_expr(field: str, value: str) -> str:
    family = "ip" if ipaddress.ip_network(value, strict=False).version == 4 else "ip6"
    return f"{family} {field} {value}"


NFT_FIELDS = {"seq": "sequence", "ack": "ackseq"}


def rule_text(params: MatchParams) -> str:
    """One nft rule (without the chain) for ``params``."""
    parts: list[str] = []
    tcp = isinstance(params, MangleParams)
    if isinstance(params, TcpMatchParams):
        if params.tcp_flags is not None:
            mask, want = parse_tcp_flags(params.tcp_flags)
            parts.append(f"tcp flags & ({'|'.join(mask)}) == {'|'.join(want) or '0x0'}")
            tcp = True
        for field, value in (("sport", params.sport), ("dport", params.dport)):
            if value is not None:
                parts.append(f"tcp {field} {value}")
                tcp = True
    if isinstance(params, FilterParams) and params.action == "reject":
        tcp = tcp or params.reject_with == "tcp-reset"
    if tcp:
        parts.insert(0, "meta l4proto tcp")
    for field, value in (("saddr", params.saddr), ("daddr", params.daddr)):
        if value is not None:
            parts.append(_addr_expr(field, value))
    if params.probability < 100:
        # Last, so only packets that match everything else draw a number.
        threshold = round(params.probability * NUMGEN_MOD / 100)
        parts.append(f"numgen random mod {NUMGEN_MOD} < {threshold}")
    parts.append(statement(params))
    return " ".join(parts)


def statement(params: MatchParams) -> str:
    """What a matching packet gets: a verdict, or for nft-mangle a rewrite (then accept)."""
    if isinstance(params, MangleParams):
        field = f"tcp {NFT_FIELDS[params.field]}"
        if params.xor is not None:
            return f"{field} set {field} ^ {params.xor:#x}"
        return f"{field} set {params.set}"
    if isinstance(params, FilterParams) and params.action == "reject":
        if params.reject_with == "tcp-reset":
            return "reject with tcp reset"
        return "reject with icmpx type port-unreachable"
    return "drop"


def table_script(table: str, params: MatchParams) -> str:
    rule = rule_text(params)
    # mangle runs before the filter priority, as a middlebox rewrites before anyone filters
    priority = "mangle" if isinstance(params, MangleParams) else "filter"
    chains = "".join(
        f"  chain {hook} {{\n    type filter hook {hook} priority {priority}; policy accept;\n"
        f"    {rule}\n  }}\n"
        for hook in params.direction
    )
    return f"table {FAMILY} {table} {{\n{chains}}}\n"


def run_nft(namespace: str | None, script: str, check_only: bool = False) -> None:
    """Run an nft script in ``namespace``; FaultError with nft's own message on failure."""
    result = netns.nft(namespace, script, check_only)
    if result.returncode != 0:
        err = result.stderr
        first = next((line for line in err.splitlines() if "Error" in line), err.strip())
        raise FaultError(
            f"nft in {namespace or 'the host'} refused the ruleset: {first}",
            "check the fault's params (`chaos faults types`); the script was:\n" + script,
        )


def table_exists(namespace: str, table: str) -> bool:
    proc = netns.popen(
        namespace,
        [netns.nft_binary(), "list", "table", FAMILY, table],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc.wait(timeout=30) == 0


class NftHandle(HandleData):
    """The namespace, the fault's own table, and the script that makes it."""

    netns: str
    table: str
    script: str


class _NftFault(Fault):
    handle_model = NftHandle
    """A table of rules (drop, reject or rewrite) owned by one fault."""

    params: MatchParams
    features: ClassVar[tuple[str, ...]] = ("nftables",)

    def check_target(self) -> None:
        if self.target.netns is None:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: refusing to filter the host namespace",
                "aim it at a role of the lab (client, gateway, proxy, origin)",
            )
        # Checked by the kernel's own parser now, so a bad rule stops the run before it starts.
        run_nft(self.target.netns, table_script("chaos_check", self.params), check_only=True)

    def prepare(self) -> Handle:
        assert self.target.netns is not None  # check_target refused the host
        handle_id = new_handle_id()
        table = f"chaos_{handle_id}"
        script = table_script(table, self.params)
        state = NftHandle(netns=self.target.netns, table=table, script=script)
        return self.handle(state, handle_id)

    def apply(self, handle: Handle) -> None:
        state = NftHandle.of(handle)
        run_nft(state.netns, state.script)

    @classmethod
    def revert(cls, handle: Handle) -> None:
        state = NftHandle.of(handle)
        namespace, table = state.netns, state.table
        if not netns.exists(namespace):
            return  # the namespace, and its table with it, is gone
        # add + delete in one transaction: no error when the table was never made.
        run_nft(namespace, f"add table {FAMILY} {table}\ndelete table {FAMILY} {table}\n")


class NftFilter(_NftFault):
    kind = "nft-filter"
    params_model = FilterParams


class NftLoss(_NftFault):
    kind = "nft-loss"
    params_model = LossParams


class NftMangle(_NftFault):
    kind = "nft-mangle"
    params_model = MangleParams
