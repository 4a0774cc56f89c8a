"""``chaos collect``: a better ``ss -s`` for any host or namespace.

:func:`collect_main` is the entry point the ``chaos`` command wires in. It samples the
host, a named namespace, or the namespace of a process, once or every ``interval`` seconds,
and prints either tables (rich) or JSON lines (one sample per line, the same points the
sink writes). User errors are raised as :class:`~chaos.errors.ChaosError` for the CLI to map.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from chaos.collect import collectors_for
from chaos.collect.base import Collector
from chaos.collect.kernel import NOTABLE
from chaos.collect.sampler import Sampler
from chaos.errors import SinkError
from chaos.kernel.nsref import NetnsRef
from chaos.kernel.sockdiag import STATE_NAMES
from chaos.record import schema
from chaos.record.point import Sample
from chaos.record.schema import is_family_total
from chaos.sink import InfluxFlags, Sink, resolve_influx

TEARDOWN_ROWS = ("fin_wait1", "fin_wait2", "close_wait", "last_ack", "closing")
HANDSHAKE_ROWS = ("syn_sent", "syn_recv")


def collect_main(
    netns: str | None,
    pid: int | None,
    once: bool,
    as_json: bool,
    interval: float,
    sink_dir: Path | None = None,
    role: str | None = None,
    influx: InfluxFlags | None = None,
    container: str | None = None,
    zombie_idle_s: float = 60.0,
) -> int:
    """Sample one namespace (name, pid's, container's, or the host's) and print, or, with
    ``sink_dir``, write to a sink (``samples.lp`` there, and InfluxDB when configured) until
    SIGTERM or Ctrl-C; returns the exit code.

    Zombie candidates (silent for ``zombie_idle_s``, no keepalive) are confirmed against
    every namespace of this host that owns their remote address: no lab plan says where
    the peers are."""
    ns = NetnsRef.resolve(netns, pid, container)
    tags = {"role": role} if role else None
    collectors = collectors_for(
        ns,
        tags=tags,
        census_mode="auto",
        cumulative_counters=once,
        zombie_idle_s=zombie_idle_s,
        zombie_host_peers=True,
    )
    console = Console()
    try:
        if sink_dir is not None:
            return _to_sink(console, collectors, sink_dir, influx, interval, once)
        if once:
            now = time.time()
            samples: list[Sample] = []
            for collector in collectors:
                t0 = time.perf_counter()
                produced = collector.sample(now)
                cost = {"duration_ms": round((time.perf_counter() - t0) * 1000, 3)}
                ctags = {"collector": collector.name, "netns": collector.netns}
                samples += produced
                samples.append(Sample(schema.COLLECTOR_COST, ctags, cost, produced[0].time_ns))
            _emit(console, samples, as_json, once=True)
            return 0
        return _live(console, collectors, as_json, interval)
    finally:
        for collector in collectors:
            collector.close()
        ns.close()


def _to_sink(
    console: Console,
    collectors: list[Collector],
    directory: Path,
    flags: InfluxFlags | None,
    interval: float,
    once: bool,
) -> int:
    """Every tick into a Sink, as ``chaos run`` does; the sink's ``host`` tag tells the
    machines (or containers) of a distributed setup apart."""
    influx = resolve_influx(None, flags or InfluxFlags())
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(
            f"cannot create the sink directory {directory}: {exc.strerror}",
            "give --sink a directory this user can write to",
        ) from None
    sink = Sink(directory, tags={"host": socket.gethostname()}, influx=influx, on_error=print_warn)
    where = f" and InfluxDB at {influx.describe()}" if influx else ""
    console.print(f"samples to {sink.path}{where}", highlight=False)
    sampler = Sampler(collectors, interval=interval)
    sampler.samples.subscribe(sink.write)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` sends SIGTERM
    try:
        if once:
            sampler.final_tick()
            return 0
        sampler.start()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        sampler.stop()
        stats = sink.close()
        console.print(f"sink: {stats.recorded} points recorded, {stats.written} written")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def print_warn(message: str) -> None:
    print(f"sink: {message}", file=sys.stderr, flush=True)


def _live(console: Console, collectors: list[Collector], as_json: bool, interval: float) -> int:
    ticks: queue.Queue[list[Sample]] = queue.Queue()
    sampler = Sampler(collectors, interval=interval)
    sampler.samples.subscribe(ticks.put)
    sampler.start()
    try:
        if as_json or not console.is_terminal:
            while True:
                _emit(console, ticks.get(), as_json, once=False)
        from rich.live import Live

        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                live.update(render(ticks.get(), once=False), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        sampler.stop()


def _emit(console: Console, samples: list[Sample], as_json: bool, once: bool) -> None:
    if as_json:
        out = sys.stdout
        for sample in samples:
            out.write(json.dumps(sample.as_dict(), separators=(",", ":")) + "\n")
        out.flush()
    else:
        console.print(render(samples, once=once))


# --- tables -----------------------------------------------------------------------------------


def _by(samples: Iterable[Sample], measurement: str) -> list[Sample]:
    return [s for s in samples if s.measurement == measurement]


def _fmt_s(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _num(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(samples: list[Sample], once: bool) -> Group:
    """The human view of one round of samples."""
    parts: list[object] = []
    states = _by(samples, schema.TCP_STATES)
    every = next((s for s in states if is_family_total(s.tags)), None)
    netns = every.tags.get("netns", "?") if every else "?"
    stamp = datetime.fromtimestamp(samples[0].time_ns / 1e9) if samples else datetime.now()
    exact = bool(every and every.fields.get("exact"))
    parts.append(
        Text.assemble(
            ("TCP sockets in ", "bold"),
            (netns, "bold cyan"),
            f"  {stamp:%Y-%m-%d %H:%M:%S}",
            ("  (exact per-family counts)" if exact else "  (ESTABLISHED/TIME_WAIT from counters)"),
        )
    )

    if every:
        table = Table(title="states", title_justify="left", box=None, pad_edge=False)
        table.add_column("state")
        table.add_column("all", justify="right")
        fams = [s for s in states if s.tags.get("family") in ("ipv4", "ipv6")]
        for fam in fams:
            table.add_column(fam.tags["family"], justify="right")
        for name in STATE_NAMES.values():
            count = every.fields.get(name, 0)
            cells = [_num(f.fields[name]) if name in f.fields else "-" for f in fams]
            table.add_row(name, _num(count), *cells, style=None if count else "dim")
        table.add_row("total", _num(every.fields.get("total", 0)), *["" for _ in fams])
        parts.append(table)

    teardown = next(iter(_by(samples, schema.TCP_TEARDOWN)), None)
    zombies = next(iter(_by(samples, schema.TCP_ZOMBIES)), None)
    if teardown:
        table = Table(title="teardown", title_justify="left", box=None, pad_edge=False)
        for col in ("state", "sockets", "oldest", "max retrans"):
            table.add_column(col, justify="left" if col == "state" else "right")
        for name in TEARDOWN_ROWS + HANDSHAKE_ROWS:
            f = teardown.fields
            count = f.get(name, 0)
            table.add_row(
                name,
                _num(count),
                _fmt_s(f.get(f"{name}_oldest_s")),
                _num(f.get(f"{name}_max_retrans", "-")),
                style=None if count else "dim",
            )
        table.add_row("orphans", _num(teardown.fields.get("orphans", 0)), "", "")
        if zombies:
            zf = zombies.fields
            label = f"zombies (idle > {_fmt_s(zf.get('threshold_s'))}, no keepalive)"
            table.add_row(label, _num(zf.get("candidates", 0)), _fmt_s(zf.get("oldest_idle_s")), "")
            if "confirmed" in zf:
                table.add_row("  confirmed (peer socket gone)", _num(zf["confirmed"]), "", "")
                table.add_row("  unchecked (peer not on this host)", _num(zf["unmatched"]), "", "")
        parts.append(table)

    summary = next(iter(_by(samples, schema.PORT_BUDGET_SUMMARY)), None)
    if summary:
        sf = summary.fields
        title = (
            f"port budget: range {sf.get('range_lo')}-{sf.get('range_hi')} "
            f"({_num(sf.get('capacity'))} ports per destination), "
            f"{_num(sf.get('outbound'))} outbound sockets in {_num(sf.get('groups'))} groups"
        )
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in ("source", "destination", "used", "time_wait", "used %", "slope/s", "full in"):
            table.add_column(col, justify="left" if col in ("source", "destination") else "right")
        for group in _by(samples, schema.PORT_BUDGET):
            g, tags = group.fields, group.tags
            util = g.get("utilisation")
            style = "red" if isinstance(util, float) and util >= 0.8 else None
            table.add_row(
                tags.get("src", "?"),
                f"{tags.get('dst', '?')}:{tags.get('dport', '?')}",
                _num(g.get("used")),
                _num(g.get("time_wait")),
                f"{util * 100:.1f}" if isinstance(util, float) else "-",
                _num(g.get("slope_per_s", "-")),
                _fmt_s(g.get("seconds_left")),
                style=style,
            )
        parts.append(table)

    counters: dict[str, object] = {}
    for sample in _by(samples, schema.TCP_COUNTERS):
        group = sample.tags.get("group", "")
        for key, value in sample.fields.items():
            counters[f"{group}.{key}"] = value
    if counters:
        title = "kernel counters " + ("(since boot)" if once else "(this interval)")
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        table.add_column("counter")
        table.add_column("value", justify="right")
        for key in (*NOTABLE, "Tcp.CurrEstab"):
            if key in counters:
                value = counters[key]
                table.add_row(key, _num(value), style=None if value else "dim")
        parts.append(table)

    sockstat = next(iter(_by(samples, schema.SOCKSTAT)), None)
    if sockstat:
        f = sockstat.fields
        parts.append(
            Text(
                "sockstat: "
                + ", ".join(
                    f"{k} {_num(f[k])}"
                    for k in ("tcp_inuse", "tcp6_inuse", "tcp_tw", "tcp_orphan", "tcp_alloc")
                    if k in f
                )
                + (f", tcp_mem {_num(f['tcp_mem_pages'])} pages" if "tcp_mem_pages" in f else "")
                + "  (orphan, alloc and mem are host-wide)"
            )
        )
    conntrack = next(iter(_by(samples, schema.CONNTRACK)), None)
    if conntrack:
        f = conntrack.fields
        states = ", ".join(f"{k[4:]} {_num(v)}" for k, v in f.items() if k.startswith("tcp_") and v)
        stats = ", ".join(
            f"{k} {_num(f[k])}"
            for k in ("insert_failed", "drop", "early_drop", "invalid")
            if k in f
        )
        parts.append(
            Text(
                f"conntrack: {_num(f.get('entries', 0))} of {_num(f.get('max', '?'))} entries"
                + (f" ({states})" if states else "")
                + (f"; {stats}" if stats else "")
            )
        )
    costs = [s for s in _by(samples, schema.COLLECTOR_COST) if s.tags.get("collector") != "sampler"]
    if costs:
        parts.append(
            Text(
                "cost: "
                + ", ".join(
                    f"{s.tags.get('collector')} {s.fields.get('duration_ms', 0):.1f} ms"
                    for s in costs
                ),
                style="dim",
            )
        )
    return Group(*parts)  # type: ignore[arg-type]
