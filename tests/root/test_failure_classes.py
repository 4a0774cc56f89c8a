"""Failures by error class over time, end to end: ``chaos run`` (a real Locust master with 2
workers in a real lab) with two fault windows that force two classes, then ``samples.lp`` and
``chaos report``.

The proxy's namespace first answers new connections with an RST (ECONNREFUSED), then drops
them (connect timeout). Every failure must land in ``load_failures`` once, in a second of
its own fault window, and the per-class sums must equal Locust's own failures CSV.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from chaos.lab.topology import list_labs
from chaos.record.journal import read_journal
from chaos.record.lineproto import read_points

pytestmark = pytest.mark.root

CONNECT_TIMEOUT = 0.5
SCENARIO = f"""
name: failure-classes
duration: 8s
lab:
  client: {{addresses: 2}}
  proxy: {{mode: tcp}}
  origin: {{protocol: raw, close: client}}
load:
  users: 20
  rate: 100
  teardown: client-close
  connect_timeout: {CONNECT_TIMEOUT}s
faults:
  - type: nft-filter   # new connections to the proxy get an RST: ECONNREFUSED
    target: proxy
    at: 2s
    for: 2s
    params: {{action: reject, reject_with: tcp-reset, tcp_flags: syn, dport: 8080}}
  - type: nft-filter   # their SYNs vanish: ConnectTimeout
    target: proxy
    at: 5s
    for: 1.5s
    params: {{tcp_flags: syn, dport: 8080}}
"""


def locust_totals(run: Path) -> dict[str, int]:
    """Occurrences per class in Locust's own failures CSV (summed over its entries)."""
    totals: dict[str, int] = defaultdict(int)
    with open(run / "locust" / "locust_failures.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            totals[row["Error"]] += int(row["Occurrences"])
    return dict(totals)


def fault_windows(run: Path) -> list[tuple[float, float]]:
    events = read_journal(run / "journal.jsonl")
    applied = [e["ts"] for e in events if e["event"] == "fault.apply"]
    reverted = [e["ts"] for e in events if e["event"] == "fault.revert"]
    assert len(applied) == len(reverted) == 2, events
    return list(zip(applied, reverted, strict=True))


def test_failure_classes_over_time_match_locusts_totals(chaos_cli, tmp_path, lab_name):
    scenario = tmp_path / "failure-classes.yaml"
    scenario.write_text(SCENARIO)
    runs = tmp_path / "runs"
    result = chaos_cli("run", str(scenario), "--workers", "2", "--name", lab_name,
                       "--runs-dir", str(runs))  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert lab_name not in list_labs()
    (run,) = [p for p in runs.iterdir() if p.is_dir()]

    counts: dict[str, dict[int, int]] = defaultdict(dict)  # class -> second -> count
    for point in read_points(run / "samples.lp"):
        if point.measurement != "load_failures":
            continue
        assert point.tags["role"] == "client" and point.tags["netns"].endswith("-client")
        second = (point.time_ns or 0) // 1_000_000_000
        name = point.tags["class"]
        assert second not in counts[name], f"two points for {name} at {second}"
        counts[name][second] = int(point.fields["count"])

    expected = locust_totals(run)
    assert set(expected) == {"ECONNREFUSED", "ConnectTimeout"}, expected
    assert expected["ECONNREFUSED"] >= 50 and expected["ConnectTimeout"] >= 10, expected
    # Every failure once: per class, the seconds add up to Locust's total
    assert {c: sum(s.values()) for c, s in counts.items()} == expected

    # Each class in the seconds of its own fault window (a connect that times out fails
    # CONNECT_TIMEOUT s after its SYN; one second of slack for whole-second buckets).
    windows = dict(zip(("ECONNREFUSED", "ConnectTimeout"), fault_windows(run), strict=True))
    for name, (applied, reverted) in windows.items():
        late = CONNECT_TIMEOUT if name == "ConnectTimeout" else 0.0
        busy = [s for s, n in counts[name].items() if n]
        assert busy, name
        assert int(applied) - 1 <= min(busy) and max(busy) <= int(reverted + late) + 1, (
            name, busy, applied, reverted,
        )  # fmt: skip

    # The report draws one line per class from these points, with the same totals.
    report = chaos_cli("report", str(run))
    assert report.returncode == 0, report.stderr + report.stdout
    summary = json.loads((run / "report.json").read_text())
    assert summary["plots"]["errors"]["series"] == 2
    assert summary["load"]["failures_by_class"] == expected
    html = (run / "report.html").read_text()
    assert "failures per second by class" in html
