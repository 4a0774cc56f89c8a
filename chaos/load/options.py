"""Map a scenario's ``load:`` section onto the Locust command line of ``locustfiles/``.

The locustfiles take every knob as a ``--option`` (see ``locustfiles/_common.py``), so the
same users run under ``chaos run`` and under a plain ``locust -f``.
"""

from __future__ import annotations

from pathlib import Path

from chaos.scenario.model import LoadSpec

LOCUSTFILES = Path(__file__).resolve().parent.parent.parent / "locustfiles"


def locustfile_for(load: LoadSpec) -> Path:
    return LOCUSTFILES / ("raw_tcp.py" if load.user == "raw" else "http_user.py")


def user_options(
    load: LoadSpec, protocol: str, source_addresses: list[str], workers: int
) -> list[str]:
    """The user-class options for one scenario (not the master/worker plumbing)."""
    if load.user == "http":
        return []
    args = [
        "--protocol",
        protocol,
        "--teardown",
        load.teardown,
        "--connect-timeout",
        str(load.connect_timeout),
        "--slow-connect-ms",
        str(load.slow_connect * 1000),
        "--workers-hint",
        str(workers),
    ]
    if source_addresses:
        args += ["--source-addresses", ",".join(source_addresses)]
    if load.rate:
        args += ["--rate", str(load.rate), "--rate-mode", load.rate_mode]
    if load.rate_steps:
        args += [
            "--rate-steps",
            ",".join(str(r) for r in load.rate_steps),
            "--step-seconds",
            str(load.step_duration),
        ]
    if load.teardown == "hold-after-fin":
        args += ["--hold-seconds", str(load.hold)]
    if load.teardown == "idle-before-send":
        args += ["--idle-ms", str(load.idle_before_send * 1000)]
    if load.rcvbuf:
        args += ["--rcvbuf", str(load.rcvbuf)]
    if load.read_rate:
        args += ["--read-rate", str(load.read_rate)]
    if load.keepalive.enabled:
        args += [
            "--keepalive",
            "--keepidle",
            str(int(load.keepalive.idle)),
            "--keepintvl",
            str(int(load.keepalive.interval)),
            "--keepcnt",
            str(load.keepalive.count),
        ]
    return args
