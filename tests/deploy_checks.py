"""Checks of the docker compose stack's files, shared by tests/unit/test_deploy.py and
tests/root/test_compose_stack.py: `docker-compose config`, and the measurements and fields
the Grafana dashboard's queries name."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "chaos.json"
SERVICES = {
    "influxdb", "grafana", "origin", "proxy", "haproxy", "proxy-agent", "origin-agent",
    "proxy-collector", "origin-collector", "controller", "worker",
}  # fmt: skip


def compose_config(*extra: str) -> dict:
    """`docker-compose config` with .env.example: it interpolates and validates the file
    against the compose schema shipped in the package, and needs no engine."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (Debian package; scripts/setup installs it)")
    proc = subprocess.run(
        [binary, "--env-file", str(REPO / ".env.example"), "-f", str(REPO / "docker-compose.yml"),
         "config", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout) if proc.stdout.strip() else {}


def _documented_names(table: str, name: str) -> dict[str, set[str]]:
    """measurement -> the backticked names (regex ``name``) in the first column of every
    ``| table |`` table of docs/metrics.md, by section (a ``##`` or ``###`` heading names the
    measurements it is about in backticks)."""
    found: dict[str, set[str]] = {}
    measurements: list[str] = []
    in_table = False
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        if line.startswith(("## ", "### ")):
            measurements = re.findall(r"`(\w+)`", line)
            in_table = False
        elif line.startswith(f"| {table} |"):
            in_table = True
        elif in_table and line.startswith("|"):
            for found_name in re.findall(f"`({name})`", line.split("|")[1]):
                for m in measurements:
                    found.setdefault(m, set()).add(found_name)
        else:
            in_table = False
    return found


def documented_fields() -> dict[str, set[str]]:
    """measurement -> field names, as regexes (a `<state>` template matches any word)."""
    return {
        m: {re.sub(r"<\w+>", r"\\w+", f) for f in names}
        for m, names in _documented_names("field", r"[\w<>]+").items()
    }


def kernel_counters() -> set[str]:
    """tcp_counters carries every TcpExt and Tcp counter of the kernel, by the kernel's names."""
    names: set[str] = set()
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        for line in Path(path).read_text().splitlines()[::2]:
            group, _, rest = line.partition(":")
            if group in ("TcpExt", "Tcp"):
                names.update(rest.split())
    return names


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["query"] for p in board["panels"] for t in p["targets"]]
    return queries + [a["query"] for a in board["annotations"]["list"]]


#: tags on every point of a run or a `chaos collect --sink` (docs/metrics.md, first section)
COMMON_TAGS = {"netns", "role", "host", "run", "scenario"}


def query_refs(query: str) -> tuple[list[str], list[str]]:
    """An InfluxQL query's measurements (FROM "$bucket"."autogen"."m") and the fields its
    aggregates read."""
    fields = re.findall(r'\b(?:max|min|sum|mean|last)\("(\w+)"\)', query)
    fields += re.findall(r'^SELECT "(\w+)"', query)  # a raw field (the annotations' title)
    return re.findall(r'"autogen"\."(\w+)"', query), fields


def tag_refs(query: str) -> set[str]:
    """The tags a query filters on (WHERE "tag" =, =~, !=) or groups by."""
    where = set(re.findall(r'"(\w+)" (?:=~|!=|=) ', query))
    group = query.partition("GROUP BY")[2]
    return where | set(re.findall(r'"(\w+)"', group))


def check_query(query: str, known: dict[str, set[str]], tags: dict[str, set[str]]) -> list[str]:
    measurements, fields = query_refs(query)
    if len(measurements) != 1 or not fields:
        return [f"query names no single measurement and field: {query!r}"]
    measurement = measurements[0]
    patterns = known.get(measurement)
    if patterns is None:
        return [f"unknown measurement {measurement!r}"]
    problems = [
        f"{measurement}.{f} is not written by the collectors"
        for f in fields
        if not any(re.fullmatch(p, f) for p in patterns)
    ]
    allowed = COMMON_TAGS | tags.get(measurement, set())
    problems += [f"{measurement} has no tag {t!r}" for t in sorted(tag_refs(query) - allowed)]
    return problems


def documented_tags() -> dict[str, set[str]]:
    """measurement -> tag names, from the `| tag |` tables of docs/metrics.md."""
    return _documented_names("tag", r"\w+")


def known_fields() -> dict[str, set[str]]:
    known = documented_fields()
    known["tcp_counters"] = kernel_counters() | {"interval_s"}
    return known
