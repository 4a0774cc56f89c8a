"""The drift verdict of a long run, on run directories written here: a flat soak passes, a
leak, a creeping tick, a falling rate or a rising p99 fails, with the series named, and
``chaos report --check`` exits 10 on a drift failure. A short run is not judged."""

from __future__ import annotations

import json
import random
from pathlib import Path

from chaos.cli import main
from chaos.report import analyse

T0 = 1_700_000_000


def write_run(
    path: Path,
    seconds: int = 600,
    rss_growth_mib: float = 0.0,
    tick_growth_ms: float = 0.0,
    rate_fall: float = 0.0,
    p99_growth_ms: float = 0.0,
    locust_only: bool = False,  # a run from before the per-second load series
) -> Path:
    rng = random.Random(7)
    path.mkdir()
    journal = [
        {"ts": T0, "event": "run.start", "scenario": "soak"},
        {"ts": T0 + 2, "event": "load.start"},
        {"ts": T0 + 2 + seconds, "event": "load.end"},
        {"ts": T0 + 4 + seconds, "event": "run.end", "outcome": "done"},
    ]
    (path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in journal))
    lines, total = [], 0
    for s in range(seconds):
        f = s / seconds  # how far into the run
        ns = (T0 + 2 + s) * 10**9
        rss = (60 + rss_growth_mib * f) * 2**20 + rng.randrange(0, 2**20)
        tick = 10 + tick_growth_ms * f + rng.uniform(-3, 3) + (80 if s % 97 == 0 else 0)
        started = round((200 - rate_fall * f) * rng.uniform(0.95, 1.05))
        total += started
        p99 = 20 + p99_growth_ms * f + rng.uniform(-5, 5)
        lines += [
            f"controller,netns=host rss_bytes={int(rss)}i,threads=9i {ns}",
            f"collector_cost,collector=sampler duration_ms={tick:.3f} {ns}",
        ]
        if locust_only:
            lines.append(
                f"locust,name=connection,role=client requests={total}i,p99_ms={p99:.3f} {ns}"
            )
        else:
            lines.append(
                f"load,role=client started={started}i,completed={started}i,failed=0i,"
                f"total_count={started}i,total_p99_us={int(p99 * 1000)}i {ns}"
            )
    (path / "samples.lp").write_text("\n".join(lines) + "\n")
    return path


def drift_of(path: Path) -> dict:
    return analyse(path).summary["drift"]


def test_a_flat_soak_passes(tmp_path: Path):
    drift = drift_of(write_run(tmp_path / "flat"))
    assert drift["verdict"] == "PASS", drift
    assert {s["key"] for s in drift["series"]} == {
        "controller_rss", "tick_cost", "achieved_rate", "p99_latency"
    }  # fmt: skip
    assert drift["window_s"][0] == 62.0  # the warm-up is left out


def test_each_kind_of_drift_fails_and_is_named(tmp_path: Path):
    cases = {
        "controller_rss": dict(rss_growth_mib=30),  # 60 -> 90 MiB
        "tick_cost": dict(tick_growth_ms=20),  # 10 -> 30 ms
        "achieved_rate": dict(rate_fall=60),  # 200 -> 140/s
        "p99_latency": dict(p99_growth_ms=40),  # 20 -> 60 ms
    }
    for key, growth in cases.items():
        drift = drift_of(write_run(tmp_path / key, **growth))
        assert drift["verdict"] == "FAIL", (key, drift)
        failed = [s["key"] for s in drift["series"] if not s["passed"]]
        assert failed == [key], (key, drift)


def test_runs_without_the_load_series_are_judged_on_the_controller_alone(tmp_path: Path):
    drift = drift_of(write_run(tmp_path / "old", locust_only=True, rate_fall=60))
    assert drift["verdict"] == "PASS"
    assert [s["key"] for s in drift["series"]] == ["controller_rss", "tick_cost"]
    drift = drift_of(write_run(tmp_path / "leak", locust_only=True, rss_growth_mib=30))
    assert drift["verdict"] == "FAIL"


def test_a_short_run_is_not_judged(tmp_path: Path):
    drift = drift_of(write_run(tmp_path / "short", seconds=150, rss_growth_mib=100))
    assert drift["verdict"] == "not judged" and "180 s or more" in drift["reason"]


def test_report_check_gates_on_drift(tmp_path: Path, capsys):
    assert main(["report", "--check", str(write_run(tmp_path / "flat"))]) == 0
    leak = write_run(tmp_path / "leak", rss_growth_mib=30)
    assert main(["report", "--check", str(leak)]) == 10
    assert "drift FAIL: controller RSS +" in capsys.readouterr().out
    assert "Drift over the run" in (leak / "report.html").read_text()
