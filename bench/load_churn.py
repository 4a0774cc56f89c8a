"""New connections per second of one load process, in the lab: RawTcpUser vs FastHttpUser vs wrk.

    sudo .venv/bin/python bench/load_churn.py [--seconds 5] [--repeat 2] [--users 50]
        [--proxy-threads 1] [--origin-workers 1] [--pin] [--profile]

Each tool runs as one process in the client namespace of a real lab (``chaos.lab.lab.up``) and
opens one connection per request (``Connection: close``; RawTcpUser speaks the http protocol
with ``--teardown wait-server-fin``, so the server closes first for all three):

    straight:  client ns -> (gateway, proxy ns forward) -> origin 198.18.3.2:8080
    HAProxy:   client ns -> gateway -> HAProxy 198.18.2.2:8080 (mode tcp) -> origin

Per (tool, repeat) a fresh lab is built and measured straight, then through HAProxy (those
leave TIME_WAIT on different 4-tuples); the tools are interleaved so drift hits all alike,
and the medians are printed with the ratios against the targets, per CPU-second of the
client process: the default RawTcpUser (one Locust request per connection, the phases in the
load series) >= 4x FastHttpUser and >= 0.5x wrk. Port ranges are widened in the client and
proxy namespaces so a run never reuses a 4-tuple the server still holds in TIME_WAIT.

Per process: besides the rate (``conn/s``), the tool process's own CPU (user+sys from its
rusage, over the whole run) gives ``conn/CPU-s``: the connections the tool counted (wrk's
"N requests", Locust's ``connection`` requests) per second of CPU it used. On
2 shared cores the client, HAProxy and the origin compete for CPU, so a faster client takes
cycles from the server side it is measured against; ``--pin`` puts the tool on CPU 0 and
HAProxy and the origin on CPU 1 (the kernel still runs the veth receive path on the sending
CPU). Locust's import and start-up (~1 CPU-s on the shared 2-core machine) are in its CPU
figure: it understates Locust's conn/CPU-s for short runs (use ``--seconds 20``).

``--tls`` measures TLS instead: HAProxy (mode tcp) terminates TLS with the lab's certificate
(``lab.proxy.tls``) and each tool makes a full TLS handshake per connection: wrk with an
``https://`` URL against RawTcpUser with ``--tls`` (trusting the run's CA), and RawTcpUser
with ``--tls-resumption`` (TLS 1.3 tickets; wrk has no resumption across connections). One lab
per repeat, the tools interleaved in it; printed with the ratios against wrk.

``--profile`` runs the raw user once more through HAProxy under cProfile and prints where its
time goes (for native frames: ``py-spy record --native --pid PID``, py-spy is not installed by
scripts/setup). Locust is not imported here: every tool is a subprocess. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chaos.kernel import netns  # noqa: E402
from chaos.lab import lab  # noqa: E402
from chaos.lab.topology import LabState  # noqa: E402
from chaos.load.runner import LocustRun  # noqa: E402
from chaos.record.rundir import RunDir  # noqa: E402
from chaos.scenario import loader  # noqa: E402

LOCUSTFILES = REPO / "locustfiles"
# the targets, per CPU-second of the client process (RawTcpUser against each reference)
TARGET_VS_FAST = 4.0
TARGET_VS_WRK = 0.5


@dataclass(frozen=True)
class Sample:
    rate: float  # new connections/s, as the tool reports it
    connections: int  # connections made, as the tool counts them
    cpu_s: float  # user+sys seconds of the tool's process
    wall_s: float  # the run's wall time, start-up included
    failures: int

    @property
    def per_cpu_s(self) -> float:
        # Connections made, not rate x wall: Locust's rate is over its run time only, so
        # rate x wall would count connections for the start-up seconds too.
        return self.connections / self.cpu_s if self.cpu_s else 0.0


def scenario_text(opts: argparse.Namespace, tls: bool = False) -> str:
    wide = "{net.ipv4.ip_local_port_range: [1024, 65535]}"
    return textwrap.dedent(f"""\
        name: load-churn
        lab:
          client: {{addresses: 1, sysctls: {wide}}}
          proxy:
            kind: haproxy
            mode: tcp
            threads: {opts.proxy_threads}
            maxconn: 8000
            tls: {"true" if tls else "false"}
            sysctls: {wide}
          origin: {{protocol: http, close: server, workers: {opts.origin_workers}}}
        """)


def pin(pids: list[int], cpu: int) -> None:
    """Pin processes and their threads and children (the origin forks its workers)."""
    import psutil

    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            for thread in p.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, {cpu})


@contextlib.contextmanager
def bench_lab(
    opts: argparse.Namespace, tmp: Path, index: int, tls: bool = False
) -> Iterator[LabState]:
    scenario = loader.parse(scenario_text(opts, tls), "bench scenario")
    run = RunDir.create("load-churn", tmp)
    name = f"bc{os.getpid() % 10000}x{index}"
    try:
        state = lab.up(scenario, name, run)
        try:
            if opts.pin:
                pin([p.pid for p in state.processes], 1)
            yield state
        finally:
            lab.down(name)
    finally:
        run.close()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def client_prepare(opts: argparse.Namespace) -> Callable[[], None] | None:
    return (lambda: os.sched_setaffinity(0, {0})) if opts.pin else None


def run_wrk(state: LabState, url: str, opts: argparse.Namespace) -> Sample:
    argv = ["wrk", "-t1", f"-c{opts.users}", f"-d{opts.seconds}s", "-H", "Connection: close", url]
    t0, c0 = time.monotonic(), children_cpu()
    proc = netns.popen(
        state.namespaces["client"],
        argv,
        prepare=client_prepare(opts),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=opts.seconds + 30)
    wall, cpu = time.monotonic() - t0, children_cpu() - c0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in ", out)
    if proc.returncode != 0 or not rate or not count:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}\n{err}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = sum(int(n) for n in errors.groups()) if errors else 0
    return Sample(float(rate.group(1)), int(count.group(1)), cpu, wall, failures)


def run_locust(
    state: LabState,
    host: str,
    locustfile: str,
    args: list[str],
    opts: argparse.Namespace,
    tmp: Path,
) -> Sample:
    prepare = client_prepare(opts)
    locust = LocustRun(
        LOCUSTFILES / locustfile,
        host=host,
        run_dir=tempfile.mkdtemp(prefix="locust-", dir=tmp),
        users=opts.users,
        spawn_rate=opts.users,
        run_time=opts.seconds,
        workers=0,  # one process: the unit the targets are stated in
        user_args=args,
        spawn=lambda argv, **kw: netns.popen(state.namespaces["client"], argv, prepare, **kw),
    )
    t0, c0 = time.monotonic(), children_cpu()
    result = locust.run()
    wall, cpu = time.monotonic() - t0, children_cpu() - c0
    return Sample(result.achieved_rate, result.total_requests, cpu, wall, result.total_failures)


RAW_ARGS = ["--protocol", "http", "--teardown", "wait-server-fin"]


def tools(opts: argparse.Namespace, tmp: Path) -> dict[str, Callable[[LabState, str, int], Sample]]:
    return {
        "wrk": lambda st, host, port: run_wrk(st, f"http://{host}:{port}/", opts),
        "FastHttpUser": lambda st, host, port: run_locust(
            st, f"http://{host}:{port}", "http_user.py", [], opts, tmp
        ),
        "RawTcpUser": lambda st, host, port: run_locust(
            st, f"tcp://{host}:{port}", "raw_tcp.py", RAW_ARGS, opts, tmp
        ),
    }


def measure(opts: argparse.Namespace, tmp: Path) -> dict[str, dict[str, list[Sample]]]:
    """samples[where][tool]: a fresh lab per (repeat, tool); straight, then through HAProxy."""
    samples: dict[str, dict[str, list[Sample]]] = {"straight": {}, "HAProxy": {}}
    index = 0
    for _ in range(opts.repeat):
        for name, tool in tools(opts, tmp).items():
            index += 1
            with bench_lab(opts, tmp, index) as state:
                targets = {
                    "straight": (str(state.origin["host"]), int(state.origin["port"])),
                    "HAProxy": (str(state.proxy["host"]), int(state.proxy["port"])),
                }
                for where, (host, port) in targets.items():
                    sample = tool(state, host, port)
                    samples[where].setdefault(name, []).append(sample)
                    print(
                        f"  {where:<8} {name:<14} {sample.rate:>8,.0f} conn/s"
                        f"  {sample.per_cpu_s:>8,.0f} conn/CPU-s  failures {sample.failures}",
                        file=sys.stderr,
                    )
    return samples


def tls_tools(
    state: LabState, opts: argparse.Namespace, tmp: Path
) -> dict[str, Callable[[], Sample]]:
    host, port = state.proxy["host"], state.proxy["port"]
    raw = [*RAW_ARGS, "--tls", "--tls-ca", f"{state.run_dir}/proxy/tls/ca.crt"]
    resumed = [*raw, "--tls-resumption"]
    target = f"tcp://{host}:{port}"
    return {
        "wrk https": lambda: run_wrk(state, f"https://{host}:{port}/", opts),
        "RawTcpUser TLS": lambda: run_locust(state, target, "raw_tcp.py", raw, opts, tmp),
        "RawTcpUser TLS resumed": lambda: run_locust(
            state, target, "raw_tcp.py", resumed, opts, tmp
        ),
    }


def measure_tls(opts: argparse.Namespace, tmp: Path) -> dict[str, list[Sample]]:
    """samples[tool] through a TLS-terminating HAProxy: one lab per repeat, tools in turn."""
    samples: dict[str, list[Sample]] = {}
    for index in range(opts.repeat):
        with bench_lab(opts, tmp, 100 + index, tls=True) as state:
            for name, run in tls_tools(state, opts, tmp).items():
                sample = run()
                samples.setdefault(name, []).append(sample)
                print(
                    f"  TLS {name:<24} {sample.rate:>8,.0f} conn/s"
                    f"  {sample.per_cpu_s:>8,.0f} conn/CPU-s  failures {sample.failures}",
                    file=sys.stderr,
                )
    return samples


def report_tls(by_tool: dict[str, list[Sample]]) -> None:
    rate = {name: statistics.median(s.rate for s in ss) for name, ss in by_tool.items()}
    eff = {name: statistics.median(s.per_cpu_s for s in ss) for name, ss in by_tool.items()}
    print("\nTLS through HAProxy (a handshake per connection; one client process; medians)")
    print(f"  {'':<24} {'conn/s':>8} {'conn/CPU-s':>10}   vs wrk: conn/s  per CPU-s")
    for name in by_tool:
        line = f"  {name:<24} {rate[name]:>8,.0f} {eff[name]:>10,.0f}"
        if name != "wrk https":
            line += f"   {rate[name] / rate['wrk https']:13.2f}x"
            line += f" {eff[name] / eff['wrk https']:9.2f}x"
        print(line)


def report(where: str, by_tool: dict[str, list[Sample]]) -> None:
    rate = {name: statistics.median(s.rate for s in ss) for name, ss in by_tool.items()}
    eff = {name: statistics.median(s.per_cpu_s for s in ss) for name, ss in by_tool.items()}
    cpu = {name: statistics.median(s.cpu_s / s.wall_s for s in ss) for name, ss in by_tool.items()}
    print(f"\n{where}  (one client process; medians)")
    print(f"  {'':<22} {'conn/s':>8} {'CPU':>5} {'conn/CPU-s':>10}   vs FastHttpUser    vs wrk")
    for name in by_tool:
        line = f"  {name:<22} {rate[name]:>8,.0f} {cpu[name]:>5.0%} {eff[name]:>10,.0f}"
        if name == "RawTcpUser":
            fast, wrk = rate["FastHttpUser"], rate["wrk"]
            line += f"   {rate[name] / fast:4.2f}x            {rate[name] / wrk:4.2f}x"
            per_fast, per_wrk = eff[name] / eff["FastHttpUser"], eff[name] / eff["wrk"]
            ok_fast = "ok" if per_fast >= TARGET_VS_FAST else f"<{TARGET_VS_FAST:g}x"
            ok_wrk = "ok" if per_wrk >= TARGET_VS_WRK else f"<{TARGET_VS_WRK:g}x"
            line += f"\n  {'':<22} {'':>8} {'':>5} {'per CPU-s:':>10}"
            line += f"   {per_fast:4.2f}x {ok_fast:<10} {per_wrk:4.2f}x {ok_wrk}"
        print(line)


def profile(opts: argparse.Namespace, tmp: Path) -> None:
    import pstats

    out = tmp / "raw.prof"
    with bench_lab(opts, tmp, 0) as state:
        host = f"tcp://{state.proxy['host']}:{state.proxy['port']}"
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), str(locust_bin())]
        argv += ["-f", str(LOCUSTFILES / "raw_tcp.py"), "--host", host, "--protocol", "http"]
        argv += ["--teardown", "wait-server-fin", "--headless", "--only-summary"]
        argv += ["-u", str(opts.users), "-r", str(opts.users), "-t", f"{opts.seconds}s"]
        proc = netns.popen(
            state.namespaces["client"], argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        proc.wait(timeout=opts.seconds + 60)
    print("\nRawTcpUser under cProfile, through HAProxy (tottime; cProfile inflates calls):")
    pstats.Stats(str(out)).sort_stats("tottime").print_stats(18)


def locust_bin() -> Path:
    return Path(sys.executable).with_name("locust")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--users", type=int, default=50, help="Locust users; wrk connections")
    ap.add_argument("--proxy-threads", type=int, default=1, help="HAProxy nbthread")
    ap.add_argument("--origin-workers", type=int, default=1)
    ap.add_argument("--pin", action="store_true", help="tool on CPU 0, HAProxy+origin on CPU 1")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--tls", action="store_true", help="the TLS row instead (see above)")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: the lab is built in network namespaces", file=sys.stderr)
        return 2
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    print(
        f"lab (client ns -> [HAProxy mode tcp, nbthread {opts.proxy_threads}] -> origin,"
        f" {opts.origin_workers} worker(s)), {os.cpu_count()} CPUs, {opts.seconds}s x"
        f" {opts.repeat} per tool, {opts.users} users/connections"
        + (", pinned" if opts.pin else "")
    )
    with tempfile.TemporaryDirectory(prefix="load-churn-") as tmpdir:
        tmp = Path(tmpdir)
        if opts.tls:
            report_tls(measure_tls(opts, tmp))
            return 0
        samples = measure(opts, tmp)
        for where, by_tool in samples.items():
            report(f"{where} to the origin" if where == "straight" else "through HAProxy", by_tool)
        if opts.profile:
            profile(opts, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
