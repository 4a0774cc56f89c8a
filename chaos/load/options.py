"""Map a scenario's ``load:`` section onto the Locust command line of ``locustfiles/``.

The locustfiles take every knob as a ``--option`` (names, defaults and which user honours
which: :mod:`chaos.load.contract`), so the same users run under ``chaos run`` and under a
plain ``locust -f``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chaos.load import contract
from chaos.scenario.model import LoadSpec, LoadTls

LOCUSTFILES = Path(__file__).resolve().parent.parent.parent / "locustfiles"


def locustfile_for(load: LoadSpec) -> Path:
    return LOCUSTFILES / ("raw_tcp.py" if load.user == contract.RAW else "http_user.py")


@dataclass(frozen=True)
class LoadTlsTarget:
    """TLS in the load as a run resolves it: the scenario's settings (``Scenario.load_tls``),
    the CA file the users trust ("": the system's) and the address the proxy's certificate
    names ("": the one connected to; an intercepting gateway's clients connect elsewhere)."""

    settings: LoadTls
    ca: str = ""
    server_name: str = ""


def option_values(
    load: LoadSpec,
    protocol: str,
    source_addresses: list[str],
    workers: int,
    tls: LoadTlsTarget | None = None,
) -> dict[str, object]:
    """Option (``dest``) -> value for one scenario: only options the user kind honours
    (the scenario model refused the fields it would not)."""
    values: dict[str, object] = {
        "workers_hint": workers,
        # always: a step-only scenario (every sweep) must get the scenario's mode too
        "rate_mode": load.rate_mode,
        "connect_timeout": load.connect_timeout,
    }
    if load.rate:
        values["rate"] = load.rate
    if load.rate_steps:
        values["rate_steps"] = contract.format_rate_steps(load.rate_steps)
        values["step_seconds"] = load.step_duration
    if source_addresses:
        values["source_addresses"] = ",".join(source_addresses)
    if load.user != contract.RAW:
        return values
    values["protocol"] = protocol
    values["teardown"] = load.teardown
    values["slow_connect_ms"] = load.slow_connect * 1000
    if load.teardown == "hold-after-fin":
        values["hold_seconds"] = load.hold
    if load.teardown == "idle-before-send":
        values["idle_ms"] = load.idle_before_send * 1000
    if load.rcvbuf:
        values["rcvbuf"] = load.rcvbuf
    if load.read_rate:
        values["read_rate"] = load.read_rate
    if load.keepalive.enabled:
        values["keepalive"] = True
        values["keepidle"] = int(load.keepalive.idle)
        values["keepintvl"] = int(load.keepalive.interval)
        values["keepcnt"] = load.keepalive.count
    if tls is not None:
        values["tls"] = True
        if tls.ca:
            values["tls_ca"] = tls.ca
        if tls.server_name:
            values["tls_server_name"] = tls.server_name
        if tls.settings.resumption:
            values["tls_resumption"] = True
        if not tls.settings.close_notify:
            values["tls_no_close_notify"] = True
    return values


def user_options(
    load: LoadSpec,
    protocol: str,
    source_addresses: list[str],
    workers: int,
    tls: LoadTlsTarget | None = None,
) -> list[str]:
    """The user-class options for one scenario (not the master/worker plumbing), as argv."""
    args: list[str] = []
    for dest, value in option_values(load, protocol, source_addresses, workers, tls).items():
        option = contract.ALL_OPTIONS[dest]
        if load.user not in option.users:  # a bug here, not in the scenario
            raise ValueError(f"--{dest} is not an option of the {load.user} user")
        if option.kind is bool:
            if value:
                args.append(option.flag)
        else:
            args += [option.flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return args
