"""The ``chaos`` command. It parses arguments, calls the library and maps errors to exit
codes: a :class:`ChaosError` prints its message and fix with no traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from chaos.endings import Terminated, exit_code_of
from chaos.errors import ChaosError, ExpectationFailed, UsageError

if TYPE_CHECKING:  # chaos.run imports the whole controller: only when a command needs it
    from chaos.run import RunOptions

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_error(exc: ChaosError) -> None:
    # Messages are plain text (they quote user input), never rich markup.
    err.print(Text.assemble(("error: ", "bold red"), exc.message), soft_wrap=True)
    if exc.hint:
        err.print(Text.assemble(("fix: ", "bold"), exc.hint), soft_wrap=True)


# --- scenario commands -------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Every file, every problem: a missing file does not stop the others."""
    from chaos.errors import Problem
    from chaos.scenario import loader, view

    failed: list[ChaosError] = []
    for name in args.files:
        warnings: list[Problem] = []
        try:
            scenario = loader.load(name, "warn" if args.other_host else "error", warnings)
        except ChaosError as exc:
            failed.append(exc)
            continue
        view.print_valid(out, name, scenario, warnings)
    for exc in failed:
        print_error(exc)
    return max((exc.exit_code for exc in failed), default=0)


def cmd_scenarios(args: argparse.Namespace) -> int:
    from chaos.scenario import view

    view.print_builtins(out)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from chaos.scenario import loader

    sys.stdout.write(loader.json_schema() + "\n")
    return 0


# --- run ---------------------------------------------------------------------------------


def _check_run_flags(args: argparse.Namespace) -> None:
    """The flags of `chaos run` and `chaos sweep`, checked before anything is read or built."""
    from chaos.scenario.model import parse_duration, valid_lab_name

    if args.name is not None:
        try:
            valid_lab_name(args.name)
        except ValueError as exc:
            raise UsageError(f"--name {args.name!r}: {exc}", "e.g. --name soak1") from None
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise UsageError(
            f"--workers {args.workers}: Locust needs 1 to 256 worker processes",
            "e.g. --workers 2, or leave it out for one per core",
        )
    if args.variant is not None and not args.variant.strip():
        raise UsageError("--variant needs a variant's name", "leave --variant out for the base")
    duration = getattr(args, "duration", None)
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise UsageError(f"--duration {duration!r}: {exc}", "e.g. 30s, 10m or 1h") from None
        if seconds <= 0:
            raise UsageError(f"--duration {duration!r}: must be longer than 0", "e.g. 30s")
    rate = getattr(args, "rate", None)
    if rate is not None and not (rate > 0 and rate < float("inf")):
        raise UsageError(f"--rate {rate:g}: new connections/s must be above 0", "e.g. --rate 200")
    users = getattr(args, "users", None)
    if users is not None and not 1 <= users <= 100000:
        raise UsageError(f"--users {users}: must be 1 to 100000", "e.g. --users 20")


def _run_options(args: argparse.Namespace, **overrides: object) -> RunOptions:
    """RunOptions from the flags `chaos run` and `chaos sweep` share (checked first)."""
    from chaos.run import RunOptions
    from chaos.sink import InfluxFlags

    _check_run_flags(args)
    fields: dict[str, object] = dict(
        scenario=args.scenario,
        runs_root=Path(args.runs_dir),
        lab_name=args.name,
        workers=args.workers,
        variant=args.variant,
        proxy_config=args.proxy_config,
        proxy_kind=args.proxy_kind,
        report=not args.no_report,
        progress=not args.no_progress,
        influx=InfluxFlags(
            url=args.influx_url,
            org=args.influx_org,
            bucket=args.influx_bucket,
            disabled=args.no_influx,
        ),
    )
    return RunOptions(**{**fields, **overrides})  # type: ignore[arg-type]


def cmd_run(args: argparse.Namespace) -> int:
    from chaos.run import run_scenario

    options = _run_options(args, duration=args.duration, rate=args.rate, users=args.users)
    return run_scenario(options, out)


def cmd_sweep(args: argparse.Namespace) -> int:
    from chaos.scenario.model import parse_duration
    from chaos.sweep import SweepOptions, parse_rates, run_sweep

    ranged = (args.rate_from, args.rate_to, args.rate_step)
    rates = None  # the scenario's sweep.rates
    if args.rates or any(v is not None for v in ranged):
        rates = parse_rates(args.rates, *ranged)
    durations: dict[str, float | None] = {}
    for flag, text, example in (("--step-duration", args.step_duration, "20s"),
                                ("--max-p99", args.max_p99, "50ms")):  # fmt: skip
        try:
            durations[flag] = None if text is None else parse_duration(text)
        except ValueError as exc:
            raise ChaosError(f"{flag} {text!r}: {exc}", f"e.g. {example}") from None
    if args.extra_steps < 0:
        raise ChaosError(f"--extra-steps {args.extra_steps}: must be 0 or more", "e.g. 1")
    extra = None if args.all_steps else args.extra_steps
    options = SweepOptions(
        _run_options(args), rates, durations["--step-duration"], extra, durations["--max-p99"]
    )
    return run_sweep(options, out)


# --- push --------------------------------------------------------------------------------


def cmd_push(args: argparse.Namespace) -> int:
    from chaos.sink import InfluxFlags
    from chaos.sink.push import push, resolve_for_run, source_of

    run_dir = Path(args.run_dir)
    source_of(run_dir, args.spool)  # a wrong path is the first thing to say
    flags = InfluxFlags(url=args.url, org=args.org, bucket=args.bucket, token=args.token)
    config = resolve_for_run(run_dir, flags)
    result = push(run_dir, config, spool_only=args.spool)
    out.print(result.describe(config.describe()))
    return 0


# --- lab ---------------------------------------------------------------------------------


def cmd_lab_up(args: argparse.Namespace) -> int:
    from chaos.lab import lab, topology, view
    from chaos.record.rundir import RunDir
    from chaos.scenario import loader

    scenario = loader.load(args.scenario)
    if args.proxy_config:
        scenario = loader.with_proxy_config(scenario, args.proxy_config, args.proxy_kind)
    name = topology.lab_name_for(scenario, args.name)
    lab.preflight(scenario, name)
    run = RunDir.create(f"lab-{name}", Path(args.runs_dir))
    run.write_scenario(loader.dump_resolved(scenario))
    try:
        state = lab.up(scenario, name, run)
    finally:
        run.close()
    view.print_up(out, state, run.path, tls=bool(scenario.lab.proxy.tls))
    return 0


def cmd_lab_proxy_config(args: argparse.Namespace) -> int:
    from chaos.lab.proxies import PROXIES, Endpoints, proxy_for
    from chaos.scenario import loader

    scenario = loader.load(args.scenario)
    spec = scenario.lab.proxy
    if args.kind:
        spec = spec.model_copy(update={"kind": args.kind})
    if spec.kind not in PROXIES:
        raise ChaosError(
            f"the scenario's proxy is kind {spec.kind}: the lab generates no configuration for it",
            "give --kind haproxy, nginx or caddy",
        )
    # the placeholders stay unfilled: this is the starting point for a user's own file
    endpoints = Endpoints("", 0, "", 0, origin_tls=scenario.lab.origin.tls)
    proxy = proxy_for(spec, endpoints, Path("."))
    sys.stdout.write(proxy.example())
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    from chaos.lab import lab, topology, view

    names = topology.list_labs() if args.all else [args.name]
    for name in names:
        owner = topology.running_owner(name) if args.all and not args.force else None
        if owner is not None:
            view.print_left_alone(out, name, owner.describe())
            continue
        view.print_removed(out, name, lab.down(name))
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    from chaos.lab import topology, view

    return view.print_labs(out, [args.name] if args.name else topology.list_labs())


# --- collect -----------------------------------------------------------------------------


def cmd_collect(args: argparse.Namespace) -> int:
    from chaos.collect.cli import collect_main
    from chaos.scenario.model import parse_duration

    try:
        interval = parse_duration(args.interval)
    except ValueError as exc:
        raise ChaosError(f"--interval {args.interval!r}: {exc}") from None
    try:
        zombie_idle = parse_duration(args.zombie_idle)
    except ValueError as exc:
        raise UsageError(f"--zombie-idle {args.zombie_idle!r}: {exc}", "e.g. 60 or 5m") from None
    if zombie_idle <= 0:
        raise UsageError(f"--zombie-idle {args.zombie_idle!r}: must be above 0", "e.g. 60")
    from chaos.sink import InfluxFlags

    influx = InfluxFlags(
        url=args.influx_url, org=args.influx_org, bucket=args.influx_bucket, disabled=args.no_influx
    )
    sink = Path(args.sink) if args.sink else None
    return collect_main(
        args.netns,
        args.pid,
        args.once,
        args.json,
        interval,
        sink,
        args.role,
        influx,
        container=args.container,
        zombie_idle_s=zombie_idle,
    )


# --- faults ------------------------------------------------------------------------------


def cmd_faults_list(args: argparse.Namespace) -> int:
    from chaos.faults.engine import view
    from chaos.faults.engine.ledger import Ledger

    ledger = Ledger()
    entries, bad = ledger.entries()
    if args.json:
        view.print_entries_json(entries)
    else:
        view.print_entries(out, entries, ledger.dir)
    view.print_bad(err, bad)
    return 1 if bad else 0


def cmd_faults_types(args: argparse.Namespace) -> int:
    from chaos.faults.engine import view

    view.print_fault_types(out, args.verbose)
    return 0


def cmd_revert_all(args: argparse.Namespace) -> int:
    import os

    from chaos.errors import FaultError, NotRootError
    from chaos.faults.engine import view
    from chaos.faults.engine.guard import revert_leftovers
    from chaos.faults.engine.ledger import Ledger

    if os.geteuid() != 0:
        raise NotRootError(
            "reverting faults changes namespaces, nftables rules and processes: it needs root",
            "run it as root: `sudo .venv/bin/chaos revert-all`",
        )
    ledger = Ledger()
    entries, bad = ledger.entries()
    if not entries and not bad:
        view.print_nothing_to_revert(out, ledger.dir)
        return 0
    failed = view.print_reverts(out, err, revert_leftovers(ledger, force=args.force), bad)
    return FaultError.exit_code if failed else 0


def cmd_agent(args: argparse.Namespace) -> int:
    from chaos.agent.service import serve

    return serve(
        args.listen,
        args.token_file,
        args.allow,
        args.lab,
        args.tls_cert,
        args.tls_key,
        args.allow_type,
    )


# --- report and compare ------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from chaos.report import drift_failed, print_summary, write_report

    report = write_report(Path(args.run_dir))
    print_summary(out, report.run.summary, report)
    failed = report.summary["verdict"] == "FAIL" or drift_failed(report.summary)
    return ExpectationFailed.exit_code if failed and args.check else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from chaos.report.compare import compare_runs

    html = Path(args.html) if args.html else None
    return compare_runs(Path(args.run_a), Path(args.run_b), out, html)


# --- doctor ------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from chaos.capabilities import print_checks, probe_all

    print_checks(out, probe_all(), args.json)
    return 0


# --- parser ------------------------------------------------------------------------------


def add_influx_flags(p: argparse.ArgumentParser) -> None:
    influx = p.add_argument_group(
        "InfluxDB",
        "override sink.influxdb and INFLUXDB_V2_URL/ORG/BUCKET; the token comes from "
        "$INFLUXDB_V2_TOKEN (or the variable sink.influxdb.token_env names)",
    )
    influx.add_argument("--influx-url", default=None, metavar="URL", help="e.g. http://host:8086")
    influx.add_argument("--influx-org", default=None, metavar="ORG")
    influx.add_argument("--influx-bucket", default=None, metavar="BUCKET")
    influx.add_argument(
        "--no-influx", action="store_true", help="samples.lp only, even if InfluxDB is configured"
    )


def add_proxy_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy-config",
        default=None,
        metavar="FILE",
        help="run the lab's proxy with your own configuration file (see README, "
        "'Test your own proxy')",
    )
    p.add_argument(
        "--proxy-kind",
        choices=("haproxy", "nginx", "caddy"),
        default=None,
        help="the proxy --proxy-config is for (default: told from the file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaos",
        description="Load and chaos tester for TCP connection teardown.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_text: str,
        parent: argparse._SubParsersAction = sub,
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("validate", cmd_validate, "check scenario files and report every problem")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--other-host",
        action="store_true",
        help="the scenario runs elsewhere: this host's kernel features and sysctls only warn",
    )
    add("scenarios", cmd_scenarios, "list the built-in scenarios")
    add("schema", cmd_schema, "print the scenario JSON Schema (for editors)")

    p = add("run", cmd_run, "build the lab, run a scenario, tear everything down")
    p.add_argument(
        "scenario",
        nargs="?",
        default="smoke",
        metavar="SCENARIO",
        help="built-in name or YAML file (default: smoke)",
    )
    p.add_argument("--duration", type=str, default=None, help="override, e.g. 30s or 1h")
    p.add_argument(
        "--rate", type=float, default=None, help="override load.rate: new connections/s"
    )
    p.add_argument("--users", type=int, default=None, help="override load.users")
    p.add_argument("--workers", type=int, default=None, help="Locust worker processes")
    p.add_argument("--name", default=None, help="lab name (namespace prefix)")
    p.add_argument("--runs-dir", default="runs", help="where run directories go")
    p.add_argument("--variant", default=None, help="apply one of the scenario's variants")
    p.add_argument("--no-report", action="store_true", help="skip report.html at the end")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no live progress line (off a terminal: a compact line every 10 s)",
    )
    add_proxy_config_flags(p)
    add_influx_flags(p)

    p = add("sweep", cmd_sweep, "step the connection rate up: the knee and what ran out first")
    p.add_argument("scenario", metavar="SCENARIO", help="built-in name or YAML file")
    p.add_argument("--rates", default=None, metavar="LIST", help="e.g. 500,1000,2000")
    p.add_argument("--from", dest="rate_from", type=float, default=None, metavar="R0")
    p.add_argument("--to", dest="rate_to", type=float, default=None, metavar="R1")
    p.add_argument("--step", dest="rate_step", type=float, default=None, metavar="S")
    p.add_argument(
        "--step-duration",
        default=None,
        help="seconds per rate step (default: the scenario's sweep.step_duration, else 20s)",
    )
    p.add_argument(
        "--max-p99",
        default=None,
        metavar="DURATION",
        help="a step breaks when its p99 (connect to close) is above this, e.g. 50ms",
    )
    p.add_argument(
        "--extra-steps",
        type=int,
        default=1,
        metavar="N",
        help="steps to run after the first that broke, then stop (default 1)",
    )
    p.add_argument("--all-steps", action="store_true", help="run every step, even past the knee")
    p.add_argument("--variant", default=None, help="apply one of the scenario's variants")
    p.add_argument("--workers", type=int, default=None, help="Locust worker processes")
    p.add_argument("--name", default=None, help="lab name (namespace prefix)")
    p.add_argument("--runs-dir", default="runs", help="where run directories go")
    p.add_argument("--no-report", action="store_true", help="skip report.html at the end")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    add_proxy_config_flags(p)
    add_influx_flags(p)

    p = add("push", cmd_push, "send a run's samples (samples.lp) to InfluxDB")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/<time>-<name>")
    p.add_argument("--url", default=None, help="default: the run's sink.influxdb, INFLUXDB_V2_URL")
    p.add_argument("--org", default=None, help="default: the run's, INFLUXDB_V2_ORG")
    p.add_argument("--bucket", default=None, help="default: the run's, INFLUXDB_V2_BUCKET")
    p.add_argument("--token", default=None, help="default: $INFLUXDB_V2_TOKEN")
    p.add_argument(
        "--spool", action="store_true", help="only the points the run could not deliver (spool.lp)"
    )

    lab = sub.add_parser("lab", help="build, inspect and remove a lab")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    p = add("up", cmd_lab_up, "build a lab and start its proxy and origin", lab_sub)
    p.add_argument("scenario", nargs="?", default="smoke", metavar="SCENARIO")
    p.add_argument("--name", default=None, help="lab name (default: from the scenario, or 'lab')")
    p.add_argument("--runs-dir", default="runs")
    add_proxy_config_flags(p)
    p = add(
        "proxy-config",
        cmd_lab_proxy_config,
        "print the proxy configuration the lab generates for a scenario, placeholders "
        "unfilled: the starting point for your own (--proxy-config)",
        lab_sub,
    )
    p.add_argument("scenario", nargs="?", default="smoke", metavar="SCENARIO")
    p.add_argument("--kind", choices=("haproxy", "nginx", "caddy"), default=None)
    p = add("down", cmd_lab_down, "remove a lab and everything it made", lab_sub)
    p.add_argument("name", nargs="?", default="lab")
    p.add_argument(
        "--all", action="store_true", help="remove every lab whose owner is gone"
    )
    p.add_argument(
        "--force", action="store_true", help="with --all: also the labs of running owners"
    )
    p = add("status", cmd_lab_status, "show namespaces, addresses and processes", lab_sub)
    p.add_argument("name", nargs="?", default=None)

    p = add("collect", cmd_collect, "sample TCP states, port budget and kernel counters")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--netns", default=None, help="a named network namespace")
    target.add_argument("--pid", type=int, default=None, help="the namespace of a process")
    target.add_argument(
        "--container",
        default=None,
        metavar="NAME",
        help="the namespace of a running container (docker or podman inspect)",
    )
    p.add_argument("--once", action="store_true", help="one sample, then exit")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--interval", default="1s", help="sampling interval (default 1s)")
    p.add_argument(
        "--sink",
        default=None,
        metavar="DIR",
        help="write samples to DIR/samples.lp and to InfluxDB ($INFLUXDB_V2_URL, ORG, BUCKET, "
        "TOKEN, or the flags below) until SIGTERM, instead of printing",
    )
    p.add_argument("--role", default=None, help="a role tag on every sample, e.g. proxy")
    p.add_argument(
        "--zombie-idle",
        default="60",
        metavar="SECONDS",
        help="silence after which an ESTABLISHED socket without keepalive is a zombie "
        "candidate (default 60; also 30s, 5m)",
    )
    add_influx_flags(p)

    faults = sub.add_parser("faults", help="faults: what is active, what types exist")
    faults_sub = faults.add_subparsers(dest="faults_command", metavar="ACTION", required=True)
    p = add("list", cmd_faults_list, "active faults, from the ledger", faults_sub)
    p.add_argument("--json", action="store_true")
    p = add("types", cmd_faults_types, "every fault type with its parameters", faults_sub)
    p.add_argument("--verbose", "-v", action="store_true", help="with each family's summary")
    p = add("revert-all", cmd_revert_all, "revert every fault in the ledger (after a crash)")
    p.add_argument(
        "--force",
        action="store_true",
        help="also revert the faults of owners still running (a live run or agent)",
    )

    p = add("agent", cmd_agent, "serve the fault types over HTTP for a remote controller")
    p.add_argument(
        "--listen", default="127.0.0.1:7700", metavar="HOST:PORT", help="default 127.0.0.1:7700"
    )
    p.add_argument(
        "--token-file", default=None, metavar="FILE", help="the token (else $CHAOS_AGENT_TOKEN)"
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="TARGET",
        help="a role of --lab, a network namespace, or host (repeat); nothing else is touched",
    )
    p.add_argument(
        "--allow-type",
        action="append",
        default=[],
        metavar="TARGET=TYPE[,TYPE]",
        help="only these fault types on TARGET (an --allow entry; repeat); default: all",
    )
    p.add_argument("--lab", default=None, metavar="NAME", help="resolve roles in this lab")
    p.add_argument(
        "--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate"
    )
    p.add_argument("--tls-key", default=None, metavar="PEM", help="...and this private key")

    p = add("report", cmd_report, "write report.html and report.json for a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory made by `chaos run`")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 10 when an expectation of the run failed, or its drift verdict did",
    )
    p = add("compare", cmd_compare, "show two runs' signatures side by side")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--html", metavar="OUT", default=None, help="also write an HTML comparison")

    p = add("doctor", cmd_doctor, "show what this host supports")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ChaosError as exc:
        print_error(exc)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        err.print("interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {exc}")
        return exit_code_of(exc)


if __name__ == "__main__":
    sys.exit(main())
