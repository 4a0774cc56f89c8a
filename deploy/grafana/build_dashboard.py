"""Writes dashboards/chaos.json, the Grafana dashboard of the compose stack (run it after a
change: `python deploy/grafana/build_dashboard.py`; tests/unit/test_deploy.py checks that the
JSON is what this writes, and that every query names measurements, fields and tags the
collectors write).

InfluxQL, not Flux: it works with InfluxDB 1.8+, 2.x (through the bucket's DBRP mapping,
which 2.x makes for every bucket) and 3.x, while Flux is in maintenance and absent from 3.x.

- Variables: `bucket` (the database), `run`, `host`, `role` (multi-select, All by default).
  The controller's points (load, failures, fault events) carry `run`; the collectors' points
  carry `host` and `role`.
- Counters are per-second rates that do not change with the zoom: the kernel's increases
  divided by the seconds they cover (`sum(x) / sum(interval_s)`), the load's per-second counts
  summed over the bucket and divided by its length.
- Gauges are the bucket's `max`: utilisation, peaks, oldest ages and percentiles are not
  averaged away when zoomed out.
- Every panel has a unit; fault applies and reverts are annotations.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "chaos.json"
DATASOURCE = {"type": "influxdb", "uid": "chaos-influxdb"}
PER_BUCKET_SECOND = "($__interval_ms / 1000)"
COLLECTED = """"host" =~ /^$host$/ AND "role" =~ /^$role$/"""
OF_RUN = """"run" =~ /^$run$/"""


def source(measurement: str) -> str:
    return f'"$bucket"."autogen"."{measurement}"'


def query(select: str, measurement: str, where: str, group: str) -> str:
    return (
        f"SELECT {select} FROM {source(measurement)} WHERE $timeFilter AND {where} "
        f"GROUP BY time($__interval), {group} fill(none)"
    )


def peaks(measurement: str, fields: list[str], where: str = COLLECTED,
          group: str = '"host", "role"') -> str:  # fmt: skip
    return query(", ".join(f'max("{f}") AS "{f}"' for f in fields), measurement, where, group)


def kernel_rates(measurement: str, fields: list[str], where: str) -> str:
    select = ", ".join(f'sum("{f}") / sum("interval_s") AS "{f}"' for f in fields)
    return query(select, measurement, f"{COLLECTED} AND {where}", '"host", "role"')


def load_rates(measurement: str, fields: list[str], group: str) -> str:
    select = ", ".join(f'sum("{f}") / {PER_BUCKET_SECOND} AS "{f}"' for f in fields)
    return query(select, measurement, OF_RUN, group)


def panel(title: str, unit: str, description: str, *queries: str) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "calcs": ["max", "lastNotNull"]}},
        "targets": [
            {"refId": chr(65 + i), "datasource": DATASOURCE, "rawQuery": True,
             "resultFormat": "time_series", "query": q}
            for i, q in enumerate(queries)
        ],
    }


def variable(name: str, query_text: str, all_values: bool = True) -> dict:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query_text,
        "refresh": 2,  # on time range change
        "includeAll": all_values,
        "multi": all_values,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"} if all_values else {},
        "sort": 1,
    }


PANELS = [
    panel("TCP states", "short", "Sockets per state, per host and role (peak of each bucket).",
          peaks("tcp_states", ["established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2",
                               "close_wait", "last_ack", "closing"],
                where=f"{COLLECTED} AND \"family\" = 'all'")),
    panel("TIME_WAIT", "short", "TIME_WAIT sockets per host and role (peak of each bucket).",
          peaks("tcp_states", ["time_wait"], where=f"{COLLECTED} AND \"family\" = 'all'")),
    panel("Port budget: utilisation", "percentunit",
          "The busiest (source, destination, port) group's share of its ports, peak.",
          peaks("port_budget_summary", ["max_utilisation"])),
    panel("Port budget: ports", "short", "Ports in use toward the busiest destination, peak.",
          peaks("port_budget_summary", ["max_used", "outbound", "capacity"])),
    panel("Port budget: time left", "s",
          "Seconds until the busiest group runs out at the current slope (absent when flat).",
          query('min("min_seconds_left") AS "min_seconds_left"', "port_budget_summary",
                COLLECTED, '"host", "role"')),
    panel("Zombie ESTABLISHED candidates", "short",
          "Silent ESTABLISHED sockets, and how many of them have keepalive (peak).",
          peaks("tcp_zombies", ["candidates", "keepalive"])),
    panel("Teardown: orphans", "short", "Orphaned sockets and FIN_WAIT1 (peak).",
          peaks("tcp_teardown", ["orphans", "fin_wait1"])),
    panel("Teardown: oldest sockets", "s", "Age of the oldest FIN_WAIT1 and CLOSE_WAIT socket.",
          peaks("tcp_teardown", ["fin_wait1_oldest_s", "close_wait_oldest_s"])),
    panel("Conntrack: utilisation", "percentunit", "Entries over nf_conntrack_max (peak).",
          peaks("conntrack", ["utilisation"])),
    panel("Conntrack: drops and failures", "cps",
          "Per second: insert failures, drops, early drops, invalid packets.",
          query(", ".join(f'sum("{f}") / {PER_BUCKET_SECOND} AS "{f}"'
                          for f in ("insert_failed", "drop", "early_drop", "invalid")),
                "conntrack", COLLECTED, '"host", "role"')),
    panel("Connections", "cps",
          "Connections started, completed and failed per second (the load's own clock).",
          load_rates("load", ["started", "completed", "failed"], '"run"')),
    panel("Users", "short", "Locust users running.",
          query('max("users") AS "users"', "load", OF_RUN, '"run"')),
    panel("Failures by class", "cps", "Failed connections per second, by error class.",
          load_rates("load_failures", ["count"], '"run", "class"')),
    panel("Latency (peak p99 and max)", "µs",
          "The highest per-second p99 and maximum of each phase in the bucket.",
          peaks("load", ["connect_p99_us", "first_byte_p99_us", "total_p99_us", "total_max_us"],
                where=OF_RUN, group='"run"')),
    panel("Kernel: resets and aborts", "cps",
          "Per second, from the kernel's counters: resets sent, connections reset, aborts.",
          kernel_rates("tcp_counters", ["OutRsts", "EstabResets"], "\"group\" = 'Tcp'"),
          kernel_rates("tcp_counters", ["TCPAbortOnTimeout", "TCPAbortOnClose",
                                        "TCPChallengeACK", "TCPTimeWaitOverflow",
                                        "TCPSynRetrans", "ListenOverflows"],
                       "\"group\" = 'TcpExt'")),
    panel("Sampling cost", "ms", "What a collector tick costs (peak wall time and CPU).",
          peaks("collector_cost", ["duration_ms", "cpu_ms"],
                where=f"{COLLECTED} AND \"collector\" = 'sampler'")),
]


def dashboard() -> dict:
    for index, item in enumerate(PANELS):
        item["id"] = index + 1
        item["gridPos"] = {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)}
    return {
        "uid": "chaos",
        "title": "chaos",
        "description": "TCP teardown under load and faults (README: docker compose)",
        "tags": ["chaos"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 2,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "annotations": {"list": [{
            "name": "faults",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "red",
            "query": f"SELECT \"title\" FROM {source('chaos_event')} WHERE $timeFilter AND "
                     f"\"action\" != 'sink.open' AND {OF_RUN}",
            "textColumn": "title",
            "tagsColumn": "kind,target",
        }]},
        "templating": {"list": [
            variable("bucket", "SHOW DATABASES", all_values=False),
            variable("run", 'SHOW TAG VALUES ON "$bucket" FROM "load" WITH KEY = "run"'),
            variable("host", 'SHOW TAG VALUES ON "$bucket" FROM "tcp_states" WITH KEY = "host"'),
            variable("role", 'SHOW TAG VALUES ON "$bucket" FROM "tcp_states" WITH KEY = "role"'),
        ]},
        "panels": PANELS,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
