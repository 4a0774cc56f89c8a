"""Resolve a scenario's fault ``target`` string against a running lab into a :class:`Target`.

Target forms::

    client | gateway | proxy | origin   the role's namespace, its interfaces, and the
                                        processes the lab recorded for it (proxy, origin)
    workers                             the client namespace; the Locust worker processes,
                                        found when the fault is prepared (they start with
                                        the load, after the schedule was validated)
    ROLE:PATTERN                        the role's namespace; processes whose command line
                                        matches the regular expression PATTERN (RE2
                                        syntax: linear time, no backreferences)
    pid:N                               process N, which must live in one of the lab's
                                        namespaces (never the host's)

    http(s)://HOST:PORT/TARGET          TARGET on the agent at HOST:PORT (a RemoteTarget)

This module and the remote fault (:mod:`chaos.agent.client`) are the only ones that tell a
target on an agent from one in the lab: :func:`resolve` returns a :class:`RemoteTarget` for
an agent URL, and :func:`validate_fault` hands it to the remote fault, which the agent
validates, applies and reverts. The agent itself resolves ``TARGET`` with
:func:`resolve_local` against its allow-list.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from chaos.agent.client import is_agent_url, remote_target, validate_remote
from chaos.errors import FaultError
from chaos.faults.base import Fault, Params, RemoteTarget, Target
from chaos.faults.registry import fault_type
from chaos.kernel import netns, processes
from chaos.kernel.processes import CommandPattern
from chaos.lab.topology import LabState

#: A Locust worker's command line (see chaos.load.runner.LocustRun.worker_argv).
WORKER_PATTERN = r"locust\b.*\s--worker(\s|$)"


def _valid_forms(state: LabState) -> str:
    roles = sorted(state.namespaces)
    return ", ".join([*roles, "workers", "ROLE:PATTERN", "pid:N"])


def _unknown(target: str, state: LabState, why: str) -> FaultError:
    return FaultError(
        f"fault target {target!r}: {why}",
        f"valid targets in lab {state.name}: {_valid_forms(state)}",
    )


def links_of(namespace: str | None) -> tuple[str, ...]:
    """The interfaces of ``namespace`` (None: the host's), without loopback."""
    with netns.ipr(namespace) as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return tuple(name for name in names if name != "lo")


def _role_target(name: str, role: str, state: LabState, pattern: str | None) -> Target:
    namespace = state.namespaces.get(role)
    if namespace is None:
        raise _unknown(name, state, f"lab {state.name} has no {role!r} namespace")
    if not netns.exists(namespace):
        raise FaultError(
            f"fault target {name!r}: namespace {namespace} does not exist",
            f"is lab {state.name} up? (`chaos lab status {state.name}`)",
        )
    # Only live processes whose start time still matches the record: a reused pid is not ours.
    pids = tuple(p.pid for p in state.processes if p.role == role and p.alive())
    return Target(name, namespace, links_of(namespace), () if pattern else pids, pattern)


def _namespace_of_pid(pid: int, state: LabState) -> str | None:
    try:
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
    for namespace in state.namespaces.values():
        try:
            if os.stat(netns.path_of(namespace)).st_ino == inode:
                return namespace
        except OSError:
            continue
    return None


def resolve(target: str, state: LabState) -> Target | RemoteTarget:
    """A target on an agent for an agent URL, else :func:`resolve_local`."""
    return remote_target(target) or resolve_local(target, state)


def validate_fault(
    kind: str,
    target: Target | RemoteTarget,
    raw: dict[str, Any],
    on_lost: Callable[[str], None] | None = None,
    parsed: Params | None = None,
) -> Fault:
    """The fault ``kind`` with params ``raw`` on a resolved ``target``, validated (nothing
    changes); ``parsed``: ``raw`` as the fault type already parsed it, not parsed again. On
    a target on an agent, the agent checks type, params and its target (and the token);
    ``on_lost`` hears when that fault's lease could not be renewed."""
    if isinstance(target, RemoteTarget):
        return validate_remote(kind, target, raw, on_lost)
    cls = fault_type(kind)
    return cls.validate(target, raw) if parsed is None else cls.on(target, parsed)


def local_fault_type(kind: str, target: str) -> type[Fault] | None:
    """The fault type that checks ``kind`` aimed at ``target`` without a lab (``chaos
    validate``); None for a target on an agent, which checks its faults itself."""
    return None if is_agent_url(target) else fault_type(kind)


def resolve_local(target: str, state: LabState) -> Target:
    """Turn a target string into a Target in the lab; FaultError (with the valid forms)
    otherwise."""
    text = target.strip()
    if is_agent_url(text):
        raise FaultError(
            f"fault target {text!r}: an agent URL is for remote agents, not the local lab",
            "agent targets are applied through chaos.agent.client (the fault schedule does)",
        )
    if text in state.namespaces:
        return _role_target(text, text, state, None)
    if text == "workers":
        return _role_target(text, "client", state, WORKER_PATTERN)
    kind, sep, rest = text.partition(":")
    if sep and kind == "pid":
        if not rest.isdigit():
            raise _unknown(text, state, "pid:N needs a number")
        pid = int(rest)
        if processes.state_of(pid) is None:
            raise _unknown(text, state, f"no process with pid {pid}")
        namespace = _namespace_of_pid(pid, state)
        if namespace is None:
            raise _unknown(text, state, f"process {pid} is not in lab {state.name}'s namespaces")
        return Target(text, namespace, links_of(namespace), (pid,))
    if sep and kind in state.namespaces:
        try:
            CommandPattern(rest)
        except ValueError as exc:
            raise _unknown(text, state, f"invalid pattern {rest!r}: {exc}") from None
        if not rest:
            raise _unknown(text, state, "empty pattern")
        return _role_target(text, kind, state, rest)
    raise _unknown(text, state, "unknown target")
