"""What ``chaos validate`` checks beyond the model, on the file's data as written, so that one
pass finds every problem (a model error elsewhere hides none of these):

* against the lab the scenario plans: fault targets (a role the lab has, ``workers``,
  ``pid:N``, ``ROLE:PATTERN`` with a pattern that compiles in RE2), ``ip_local_port_range``
  bounds, and ``expect`` metrics against what the collectors write
  (:mod:`chaos.record.schema`);
* against this host (:func:`host_problems`): the kernel features the faults need (netem,
  nftables) and every sysctl key, probed in a throw-away namespace as a run would.

Each problem is ``(location, message)``; the loader turns the location into the file's line.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from typing import Any

from chaos.agent.client import is_agent_url
from chaos.record import schema
from chaos.scenario.model import ORIGIN_TLS_NEEDS_HTTP, TLS_NEEDS_RAW, origin_tls_needs_http

Location = tuple[Any, ...]
Found = tuple[Location, str]

ROLES = ("client", "gateway", "proxy", "origin")
#: roles an external proxy's lab has (no gateway, no proxy namespace)
EXTERNAL_ROLES = ("client", "origin")
PORT_RANGE = "net.ipv4.ip_local_port_range"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _roles(data: dict[str, Any]) -> tuple[str, ...]:
    kind = _dict(_dict(data.get("lab")).get("proxy")).get("kind")
    return EXTERNAL_ROLES if kind == "external" else ROLES


def _local_faults(data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, fault) of each fault aimed at the local lab (agents check their own)."""
    if data.get("remote") is not None:
        return
    for index, fault in enumerate(_list(data.get("faults"))):
        target = _dict(fault).get("target")
        if isinstance(target, str) and not is_agent_url(target):
            yield index, fault


def target_problem(target: str, roles: tuple[str, ...]) -> str | None:
    """Why ``target`` can name nothing in a lab with ``roles`` (None: it can)."""
    text = target.strip()
    forms = ", ".join([*roles, "workers", "ROLE:PATTERN", "pid:N"])
    if text in roles or text == "workers":
        return None
    if text in ROLES:
        return f"target {text!r}: this lab has no {text} namespace (targets: {forms})"
    kind, sep, rest = text.partition(":")
    if sep and kind == "pid":
        if rest.isdigit() and int(rest) > 0:
            return None
        return f"target {text!r}: pid:N needs a process number, e.g. pid:4242"
    if sep and kind in roles:
        if not rest:
            return f"target {text!r}: empty pattern after {kind}:"
        from chaos.kernel.processes import CommandPattern  # what the fault will match with

        try:
            CommandPattern(rest)
        except ValueError as exc:
            return f"target {text!r}: the pattern {rest!r} does not compile (RE2): {exc}"
        return None
    if sep and kind in ROLES:
        return f"target {text!r}: this lab has no {kind} namespace (targets: {forms})"
    return f"target {text!r} names nothing in this lab; targets: {forms}"


def _sysctls(data: dict[str, Any]) -> Iterator[tuple[Location, str, object]]:
    """(location, key, value) of every sysctl the lab sets."""
    lab = _dict(data.get("lab"))
    for role in ROLES:
        for key, value in _dict(_dict(lab.get(role)).get("sysctls")).items():
            yield ("lab", role, "sysctls", key), str(key), value


def port_range_problem(value: object) -> str | None:
    if isinstance(value, str):
        value = value.split()
    try:
        low, high = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return f"{PORT_RANGE} takes two ports, e.g. [32768, 60999]"
    if not 1 <= low <= high <= 65535:
        return (
            f"{PORT_RANGE} [{low}, {high}] is out of bounds: the kernel takes "
            "1 <= first <= last <= 65535"
        )
    return None


def plan_problems(data: dict[str, Any]) -> list[Found]:
    """Problems against the lab the scenario plans (no host needed)."""
    roles = _roles(data)
    found: list[Found] = []
    for index, fault in _local_faults(data):
        if problem := target_problem(str(fault["target"]), roles):
            found.append((("faults", index, "target"), problem))
    for location, key, value in _sysctls(data):
        if key == PORT_RANGE and (problem := port_range_problem(value)):
            found.append((location, problem))
    load, proxy = _dict(data.get("load")), _dict(_dict(data.get("lab")).get("proxy"))
    if load.get("user") == "http" and "tls" not in load and proxy.get("tls") is True:
        found.append((("load", "user"), TLS_NEEDS_RAW))  # the model says it at <root>
    if origin_tls_needs_http(_dict(data.get("lab"))):
        found.append((("lab", "origin", "tls"), ORIGIN_TLS_NEEDS_HTTP))
    for index, clause in enumerate(_list(data.get("expect"))):
        metric = _dict(clause).get("metric")
        if isinstance(metric, str) and (problem := metric_problem(metric)):
            found.append((("expect", index, "metric"), problem))
    return found


def metric_problem(metric: str) -> str | None:
    """Why no collector writes ``metric`` (``measurement.field``), with the nearest name."""
    name, _, field = metric.partition(".")
    if name not in schema.MEASUREMENTS:
        close = difflib.get_close_matches(name, list(schema.MEASUREMENTS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"metric {metric!r}: no collector writes a measurement {name!r}{hint}"
    measurement = schema.MEASUREMENTS[name]
    if not measurement.has_field(field):
        close = difflib.get_close_matches(field, sorted(measurement.fields), n=1)
        hint = f"did you mean {name}.{close[0]}?" if close else "its fields: docs/metrics.md"
        return f"metric {metric!r}: {name} has no field {field!r}; {hint}"
    return None


def host_problems(data: dict[str, Any]) -> list[Found]:
    """What this host lacks for the scenario: kernel features of its faults, sysctl keys a
    namespace does not have or cannot write. Needs root (a probe namespace); without it,
    only the sysctl keys, against the host's own /proc/sys."""
    from chaos.faults.registry import fault_type  # the fault package imports the model

    needed: dict[str, Location] = {}
    for index, fault in _local_faults(data):
        try:
            features = fault_type(str(fault.get("type"))).features
        except Exception:  # an unknown type: the fault checks say so
            continue
        for feature in features:
            needed.setdefault(feature, ("faults", index, "type"))
    sysctls = [(location, key) for location, key, _ in _sysctls(data) if key.startswith("net.")]
    if not needed and not sysctls:
        return []
    if os.geteuid() != 0:
        return [
            (location, f"sysctl {key!r} does not exist on this host")
            for location, key in sysctls
            if not os.path.exists("/proc/sys/" + key.replace(".", "/"))
        ]
    return _probe(needed, sysctls)


def _probe(needed: dict[str, Location], sysctls: list[tuple[Location, str]]) -> list[Found]:
    from chaos.capabilities import FEATURES, probe_namespace
    from chaos.errors import ChaosError
    from chaos.kernel import netns

    found: list[Found] = []
    with probe_namespace() as ns:
        for feature, location in needed.items():
            check = FEATURES[feature](ns)
            if not check.ok:
                found.append((location, f"this host has no {feature}: {check.detail}"))
        for location, key in sysctls:
            try:
                netns.check_sysctl_key(key)
                netns.sysctl_get(ns, key)
            except ChaosError as exc:
                found.append((location, exc.message))
                continue
            path = netns.sysctl_path(key)
            if not netns.run_in(ns, lambda p=path: bool(os.stat(p).st_mode & 0o200)):
                found.append((location, f"sysctl {key!r} is read-only in a namespace"))
    return found
