"""``chaos report`` and ``chaos compare`` over a small real run directory.

The fixture ``data/report_run`` is a real run (2,000 ports at the client, which closes first:
EADDRNOTAVAIL once they are held in TIME_WAIT; a SIGSTOP of the origin for 4 s), trimmed: no
gateway, fewer measurements. The expected numbers are computed here from the raw files with
plain string handling (and the series file with hdrh itself), not with the report's reader.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram

from chaos.cli import main
from chaos.report import analyse, write_report
from chaos.report.build import REQUIRED_SECTIONS, rate_plot
from chaos.report.compare import diff, render_html
from chaos.report.svg import decimate, nice_step, render, split_gaps

FIXTURE = Path(__file__).parent / "data" / "report_run"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    target = tmp_path / "20261201T010136Z-tw-exhaust"
    shutil.copytree(FIXTURE, target)
    return target


def raw_field(run: Path, measurement: str, field: str, **tags: str) -> list[float]:
    """Values of one field in samples.lp, by plain text matching."""
    out = []
    for line in (run / "samples.lp").read_text().splitlines():
        head, rest = line.split(" ", 1)
        fields = rest.rsplit(" ", 1)[0]
        name, *pairs = head.split(",")
        if name != measurement or any(f"{k}={v}" not in pairs for k, v in tags.items()):
            continue
        match = re.search(rf"(?:^|,){field}=([-0-9.e]+)i?(?:,|$)", fields)
        if match:
            out.append(float(match.group(1)))
    return out


def journal(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]


# --- the HTML ------------------------------------------------------------------------------


def test_html_is_self_contained_and_has_every_section(run_dir: Path) -> None:
    report = write_report(run_dir)
    html = (run_dir / "report.html").read_text()
    assert report.html_path == run_dir / "report.html"
    # Nothing fetched: no scripts, stylesheets, fonts or images from anywhere.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert "url(http" not in html
    sections = re.findall(r'data-section="([^"]+)"', html)
    for section in REQUIRED_SECTIONS:
        assert section in sections, section
    # One state plot per namespace, one plot for each other required section.
    assert sorted(re.findall(r'data-plot="(states-[^"]+)"', html)) == [
        "states-client",
        "states-origin",
        "states-proxy",
    ]
    for section in set(REQUIRED_SECTIONS) - {"states"}:
        assert sections.count(section) == 1, section
    assert "sampler" in sections


def test_lab_counters_get_a_plot_only_when_recorded(run_dir: Path) -> None:
    write_report(run_dir)
    assert 'data-section="lab_packets"' not in (run_dir / "report.html").read_text()
    first = int((run_dir / "samples.lp").read_text().split("\n", 1)[0].rsplit(" ", 1)[1])
    tags = "netns=chaos-rd58c4-gateway,role=gateway,run=20261201T010136Z-tw-exhaust"
    deltas = [0, 3, 7, 2]
    with (run_dir / "samples.lp").open("a") as fh:
        total = 0
        for i, delta in enumerate(deltas):
            total += delta
            fh.write(
                f"lab_resets,{tags},scenario=tw-exhaust packets={total}i,bytes={40 * total}i,"
                f"packets_delta={delta}i {first + (i + 10) * 10**9}\n"
            )
    write_report(run_dir)
    html = (run_dir / "report.html").read_text()
    assert html.count('data-section="lab_packets"') == 1
    assert "gateway resets" in html and "peak 7" in html


def test_fault_bands_are_on_every_plot_at_the_right_place(run_dir: Path) -> None:
    write_report(run_dir)
    html = (run_dir / "report.html").read_text()
    events = journal(run_dir)
    t0 = next(e["ts"] for e in events if e["event"] == "run.start")
    applied = next(e for e in events if e["event"] == "fault.apply")
    fid, apply = applied["id"], applied["ts"] - t0
    revert = next(e["ts"] for e in events if e["event"] == "fault.revert") - t0
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == len(re.findall(r'class="plot"', html)) >= len(REQUIRED_SECTIONS)
    for svg in svgs:
        geometry = {
            k: float(v) for k, v in re.findall(r'data-(t0|t1|left|width)="([-0-9.e]+)"', svg)
        }
        (band,) = re.findall(rf'<g class="fault" data-fault="{fid}".*?</g>', svg, flags=re.S)
        x, width = (float(v) for v in re.search(r'<rect x="([0-9.]+)" y="\d+" width="([0-9.]+)"',
                                                band).groups())  # fmt: skip
        scale = geometry["width"] / (geometry["t1"] - geometry["t0"])
        assert x == pytest.approx(geometry["left"] + (apply - geometry["t0"]) * scale, abs=0.01)
        assert width == pytest.approx((revert - apply) * scale, abs=0.01)
        assert f"{fid}: stop → origin" in band


# --- report.json ---------------------------------------------------------------------------


def test_report_json_numbers_equal_the_samples(run_dir: Path) -> None:
    write_report(run_dir)
    summary = json.loads((run_dir / "report.json").read_text())
    roles = summary["roles"]
    assert list(roles) == ["client", "proxy", "origin"]
    for role in roles:
        for state in ("time_wait", "established"):
            values = raw_field(run_dir, "tcp_states", state, role=role)
            assert roles[role]["states"][state]["peak"] == max(values)
            assert roles[role]["states"][state]["last"] == values[-1]
    utilisation = raw_field(run_dir, "port_budget_summary", "max_utilisation", role="client")
    assert roles["client"]["port_utilisation"]["peak"] == max(utilisation) == 1.0
    resets = raw_field(run_dir, "tcp_counters", "OutRsts", role="proxy")
    assert roles["proxy"]["counters"]["OutRsts"] == sum(resets)

    # Mean over the load window: the seconds of the series in which connections started
    # (not before the master's load.ramp)
    events = journal(run_dir)
    t0 = next(e["ts"] for e in events if e["event"] == "run.start")
    ramp = next(e["ts"] for e in events if e["event"] == "load.ramp")
    stamps = [int(line.rsplit(" ", 1)[1]) // 10**9
              for line in (run_dir / "samples.lp").read_text().splitlines()
              if line.startswith("load,") and "started=0i" not in line]  # fmt: skip
    start, end = max(ramp, min(stamps)), max(stamps) + 1
    lines = [
        line.split(" ")
        for line in (run_dir / "samples.lp").read_text().splitlines()
        if line.startswith("tcp_states,") and "role=client" in line
    ]
    inside = [
        int(re.search(r"time_wait=(\d+)i", fields).group(1))
        for _, fields, stamp in lines
        if start <= int(stamp) / 1e9 <= end
    ]
    assert roles["client"]["states"]["time_wait"]["mean"] == pytest.approx(
        sum(inside) / len(inside), rel=1e-3
    )
    assert summary["load_window_s"] == [round(start - t0, 3), round(end - t0, 3)]

    # Load: the per-second series, against the origin's own count of what it served; the
    # latency against the series file's histograms merged here with hdrh itself
    started = raw_field(run_dir, "load", "started")
    load = summary["load"]
    assert load["connections"] == sum(started) == 3503
    assert load["rate"]["peak"] == max(started)
    assert load["source"].startswith("samples.lp (load series")
    served = json.loads((run_dir / "summary.json").read_text())["origin"]["requests"]
    assert load["completed"] == sum(raw_field(run_dir, "load", "completed")) == served == 2000
    failed = sum(raw_field(run_dir, "load_failures", "count"))
    assert load["failures"] == sum(raw_field(run_dir, "load", "failed")) == failed
    assert load["failures_by_class"] == {"EADDRNOTAVAIL": failed}
    # Locust's own CSV lost the workers' last reports at the stop (it gives them 0.5 s)
    with open(run_dir / "locust" / "locust_failures.csv") as fh:
        locust = {row["Error"]: int(row["Occurrences"]) for row in csv.DictReader(fh)}
    assert locust["EADDRNOTAVAIL"] < failed
    merged = None
    for line in (run_dir / "locust" / "load_series.jsonl").read_text().splitlines():
        text = json.loads(line).get("hist", {}).get("total")
        if text:
            histogram = HdrHistogram.decode(text)
            merged = histogram if merged is None else (merged.add(histogram) or merged)
    assert load["p50_us"] == merged.get_value_at_percentile(50) > 0
    assert load["p99_us"] == merged.get_value_at_percentile(99)
    assert load["max_us"] == merged.get_max_value()
    assert load["latency_us"]["count"] == merged.get_total_count()
    assert set(load["latency_ms_per_second"]) == {"p50", "p90", "p99"}

    ticks = raw_field(run_dir, "collector_cost", "duration_ms", collector="sampler")
    assert summary["sampler"]["ticks"] == len(ticks)
    assert summary["sampler"]["tick_ms"]["max"] == pytest.approx(max(ticks), rel=1e-5)

    applied, reverted = (e for e in events if e["event"].startswith("fault."))
    assert summary["faults"] == [
        {"id": applied["id"], "kind": "stop", "target": "origin",
         "start_s": round(applied["ts"] - t0, 3),
         "end_s": round(reverted["ts"] - t0, 3), "reverted": True, "instant": False,
         "steps": 1}
    ]  # fmt: skip
    # One expectation failed in summary.json: the verdict says so.
    assert summary["verdict"] == "FAIL"
    assert summary["samples"]["bad_lines"] == 0
    assert summary["samples"]["points"] == len((run_dir / "samples.lp").read_text().splitlines())
    assert all(summary["plots"][p]["points"] > 0 for p in ("rate", "time_wait", "ports"))


def test_the_load_is_drawn_one_step_per_second(run_dir: Path) -> None:
    """Each second's count holds over the second it describes, [t, t+1): no line slopes
    into a fault band from the second before it."""
    report = analyse(run_dir)
    run = report.run
    started = raw_field(run_dir, "load", "started")
    assert [v for _, v in run.load.rate] == started
    stamps = [int(line.rsplit(" ", 1)[1]) / 1e9 - run.t0
              for line in (run_dir / "samples.lp").read_text().splitlines()
              if line.startswith("load,")]  # fmt: skip
    assert [t for t, _ in run.load.rate] == pytest.approx(stamps)
    svg = render(rate_plot(run).chart)
    series = re.search(r'<g class="series" data-label="started/s".*?</g>', svg, flags=re.S)
    coords = [tuple(map(float, c.split(","))) for poly in
              re.findall(r'<polyline points="([^"]+)"', series.group(0))
              for c in poly.split()]  # fmt: skip
    # a staircase: every other segment is vertical (a change at a second's boundary)
    assert len(coords) >= 2 * len(started) - 2
    assert all(a[0] == b[0] or a[1] == b[1] for a, b in itertools.pairwise(coords))


def test_a_run_without_the_load_series_says_so(run_dir: Path) -> None:
    samples = run_dir / "samples.lp"
    samples.write_text("".join(line for line in samples.open() if not line.startswith("load")))
    report = analyse(run_dir)
    assert "connections" not in report.summary["load"]
    assert report.summary["load"]["failures_by_class"] == {"EADDRNOTAVAIL": 1075}  # summary.json
    write_report(run_dir)
    assert "no load series" in (run_dir / "report.html").read_text()


def test_fault_windows_from_chaos_events_when_the_journal_has_none(run_dir: Path) -> None:
    fid = next(e["id"] for e in journal(run_dir) if e["event"] == "fault.apply")
    path = run_dir / "journal.jsonl"
    path.write_text("".join(line for line in path.open() if '"fault.' not in line))
    faults = analyse(run_dir).summary["faults"]
    assert [(f["id"], f["kind"], f["target"], f["reverted"]) for f in faults] == [
        (fid, "stop", "origin", True)
    ]


def test_a_fault_never_reverted_lasts_to_the_end(run_dir: Path) -> None:
    path = run_dir / "journal.jsonl"
    path.write_text("".join(line for line in path.open() if '"fault.revert"' not in line))
    report = analyse(run_dir)
    (fault,) = report.summary["faults"]
    assert fault["reverted"] is False and fault["end_s"] is None
    write_report(run_dir)
    assert "(not reverted)" in (run_dir / "report.html").read_text()


# --- the command ---------------------------------------------------------------------------


def test_cli_report_prints_a_summary(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "tw-exhaust" in out and "FAIL" in out and "EADDRNOTAVAIL" in out
    assert "report.html" in out
    assert main(["report", "--check", str(run_dir)]) == 10


def test_run_and_report_print_one_summary(run_dir: Path) -> None:
    """`chaos run` ends with the summary `chaos report` prints (one function); without a
    report the load's totals stand in for the key numbers."""
    from rich.console import Console

    from chaos.report import print_summary

    def printed(summary: dict, report=None) -> str:
        console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        print_summary(console, summary, report)
        return console.export_text()

    report = write_report(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["sink"] = {"recorded": 7, "influxdb": "http://127.0.0.1:1", "written": 5,
                       "spooled": 2, "replayed": 0, "possibly_duplicated": 0, "dropped": 0,
                       "left_in_spool": 0}  # fmt: skip
    with_report, without = printed(summary, report), printed(summary)
    failed = sum(not e["passed"] for e in summary["expectations"])
    verdicts = f"{failed} of {len(summary['expectations'])} expectations failed"
    for text in (with_report, without):
        assert verdicts in text and "written 5, spooled 2, replayed 0" in text
        assert "origin requests served" in text and "samples recorded" in text
    assert "tw-exhaust" in with_report and "TIME_WAIT peak" in with_report
    assert "report.html" in with_report and f"results in {run_dir}" in with_report
    assert "total requests" in without and "report.html" not in without


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "is not a directory"),
        (lambda p: p, "is not a run directory (no journal.jsonl)"),
        (lambda p: ((p / "journal.jsonl").write_text(""), p)[-1], "has no samples.lp"),
        (
            lambda p: ((p / "journal.jsonl").write_text(""),
                       (p / "samples.lp").write_text("\n"), p)[-1],
            "holds no samples",
        ),
        (
            lambda p: ((p / "journal.jsonl").write_text(""),
                       (p / "samples.lp").write_text("not line protocol\n"), p)[-1],
            "holds no samples (1 bad lines; line 1:",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str
) -> None:
    target = make(tmp_path)
    assert main(["report", str(target)]) == 8
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].startswith("fix: ")
    assert "Traceback" not in err


# --- compare -------------------------------------------------------------------------------


def test_compare_shows_what_changed(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "b"
    shutil.copytree(run_dir, other)
    # B: half the TIME_WAIT at the client, no failures, every expectation passed.
    text = (other / "samples.lp").read_text()
    text = re.sub(
        r"^(tcp_states,.*role=client.* .*time_wait=)(\d+)i",
        lambda m: f"{m.group(1)}{int(m.group(2)) // 2}i",
        text,
        flags=re.M,
    )
    text = re.sub(r"^load_failures,.*\n", "", text, flags=re.M)
    text = re.sub(r"^(load,.*,failed=)\d+i", r"\g<1>0i", text, flags=re.M)
    (other / "samples.lp").write_text(text)
    summary = json.loads((other / "summary.json").read_text())
    summary["load"]["failures_by_class"] = {}
    for expectation in summary["expectations"]:
        expectation["passed"] = True
    (other / "summary.json").write_text(json.dumps(summary))

    a, b = analyse(run_dir), analyse(other)
    rows = {(r.section, r.name): r for r in diff(a.summary, b.summary)}
    tw = rows[("client", "TIME_WAIT peak")]
    assert (tw.a, tw.b) == (2002, 1001) and tw.significant
    assert (rows[("run", "verdict")].a, rows[("run", "verdict")].b) == ("FAIL", "PASS")
    gone = rows[("errors", "EADDRNOTAVAIL")]
    assert (gone.a, gone.b, gone.delta) == (1501, None, -1501)
    assert ("client", "ESTABLISHED peak") in rows
    assert not [k for k, r in rows.items() if not r.a and not r.b]  # both-zero rows dropped
    sections = list(dict.fromkeys(k[0] for k in rows))
    assert sections[:3] == ["run", "load", "errors"]

    out_html = tmp_path / "cmp.html"
    assert main(["compare", str(run_dir), str(other), "--html", str(out_html)]) == 0
    printed = capsys.readouterr().out
    assert "TIME_WAIT peak" in printed and "2,002" in printed and "1,001" in printed
    html = out_html.read_text()
    assert "<script" not in html and not re.search(r"(?:src|href)=\"?https?:", html)
    assert html.count("<svg") == 5
    assert html == render_html(a, b, diff(a.summary, b.summary))


# --- chart helpers -------------------------------------------------------------------------


def test_chart_helpers() -> None:
    assert [nice_step(s, 5) for s in (1, 7, 2006, 0.9)] == [0.2, 2, 500, 0.2]
    points = [(i / 100, float(i % 7)) for i in range(10_000)]
    reduced = decimate(points, 0, 100, 200)
    assert len(reduced) <= 4 * 201
    assert max(v for _, v in reduced) == 6 and min(v for _, v in reduced) == 0
    runs = split_gaps([(0, 1), (1, 1), (2, 1), (20, 1), (21, 1)])
    assert [len(r) for r in runs] == [3, 2]


def test_a_sweep_gets_its_steps_and_knee(run_dir: Path) -> None:
    steps = [
        {"target": 100, "achieved": 99.5, "failures": 0, "classes": {}, "ports": 0.3,
         "proxy_cpu": 0.2, "exhausted": [], "passed": True, "why": ""},
        {"target": 200, "achieved": 150.0, "failures": 40,
         "classes": {"EADDRNOTAVAIL": 40}, "ports": 1.0, "proxy_cpu": 0.4,
         "exhausted": ["ports"], "passed": False, "why": "failures"},
    ]
    (run_dir / "sweep.json").write_text(json.dumps(
        {"knee": 100, "first_exhausted": "ports", "evidence": "port budget 100%",
         "steps": steps, "not_run": [400, 800], "stopped_early": "200/s had 40 failures"}
    ))
    report = write_report(run_dir)
    html = report.html_path.read_text()
    assert "<h2>Capacity sweep</h2>" in html and "knee: <b>100 conn/s</b>" in html
    assert "EADDRNOTAVAIL:40" in html and html.count("class='bad'>broke</span>") == 1
    assert "not run: 400, 800 conn/s — stopped early (200/s had 40 failures)" in html
    summary = json.loads(report.json_path.read_text())
    assert summary["sweep"]["knee"] == 100
    assert [s["passed"] for s in summary["sweep"]["steps"]] == [True, False]
