"""Every built-in pathology, every mitigation variant and every control, run for real.

Each run of a scenario or variant must pass all its own expectations (the signature, or the
mitigation's effect). A mitigation (a variant not marked ``mitigation: false``, which are
other forms of the pathology) must also *change* the signature: the plain scenario's
expectations, checked against the variant's own samples, must not all pass. A control (the
cause removed or replaced) must make the plain signature fail, and fail on the clauses it
names (``fails``): a signature that also holds without its cause proves nothing. So an
expectation that passes whatever happens cannot hide here.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from session_token import TOKEN

from chaos.expect import evaluate, run_timeline
from chaos.record.journal import read_journal
from chaos.record.lineproto import read_points
from chaos.scenario import loader

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PATHOLOGIES = [name for name in loader.builtin_names() if name != "smoke"]
CASES: list[tuple[str, str | None]] = [
    (name, variant)
    for name in PATHOLOGIES
    for variant in [None, *(v.name for v in loader.load(name).variants)]
]
CONTROLS: list[tuple[str, str]] = [
    (name, control.name) for name in PATHOLOGIES for control in loader.load(name).controls
]


def test_every_pathology_has_expectations_a_mitigation_and_a_control():
    assert len(PATHOLOGIES) >= 5
    for name in PATHOLOGIES:
        scenario = loader.load(name)
        assert scenario.expect, f"{name} asserts nothing"
        assert any(v.mitigation for v in scenario.variants), f"{name} declares no mitigation"
        assert scenario.controls, f"{name} declares no control"


#: scenarios that drive hundreds of connections a second: they run alone
HEAVY = {"time-wait-storm", "time-wait-storm-nginx", "proxy-ports", "proxy-restart"}
#: runs at a time otherwise: the rest are timer-driven (idle, stopped or a few connections a
#: second), and two of them on two cores keep their timing
PARALLEL = 2
Job = tuple[str, str | None]
Outcome = tuple[subprocess.CompletedProcess, Path, dict]


class BuiltinRuns:
    """Every selected built-in run, started ahead in the background in test order, two at
    a time (heavy ones alone), so the file takes about half the serial time. Each test
    waits for its own run and judges it."""

    def __init__(self, base: Path, jobs: list[Job]) -> None:
        self.base = base
        self.names = itertools.count()
        self.slots = threading.Semaphore(PARALLEL)
        self.heavy = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=PARALLEL)
        self.futures: dict[Job, Future] = {job: self.pool.submit(self._run, job) for job in jobs}

    def _run(self, job: Job) -> Outcome:
        name, variant = job
        taken = 1
        if name in HEAVY:
            with self.heavy:
                self.slots.acquire()
                self.slots.acquire()
            taken = 2
        else:
            self.slots.acquire()
        try:
            runs = self.base / f"{name}-{variant or 'plain'}"
            runs.mkdir()
            args = ["run", name, "--name", f"{TOKEN}b{next(self.names)}", "--runs-dir",
                    str(runs), "--no-report", "--no-progress"]
            if variant:
                args += ["--variant", variant]
            result = subprocess.run(
                [str(VENV_BIN / "chaos"), *args], capture_output=True, text=True, timeout=300,
                cwd=REPO, env={**os.environ, "COLUMNS": "200"},
            )
            [run_dir] = list(runs.iterdir())
            return result, run_dir, json.loads((run_dir / "summary.json").read_text())
        finally:
            for _ in range(taken):
                self.slots.release()

    def result(self, name: str, variant: str | None) -> Outcome:
        return self.futures[(name, variant)].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def builtin_runs(request, tmp_path_factory):
    selected = [
        item.callspec.params
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    jobs = [(params["name"], params.get("variant", params.get("control"))) for params in selected]
    runs = BuiltinRuns(tmp_path_factory.mktemp("builtin"), jobs)
    yield runs
    runs.close()


@pytest.mark.parametrize(
    ("name", "variant"), CASES, ids=[f"{n}:{v or 'plain'}" for n, v in CASES]
)
def test_scenario_signature(name, variant, builtin_runs):
    result, run_dir, summary = builtin_runs.result(name, variant)
    verdicts = summary["expectations"]
    failed = [v for v in verdicts if not v["passed"]]
    assert verdicts and not failed, (
        f"exit {result.returncode}; failed: {failed}\n{result.stdout[-3000:]}\n{result.stderr}"
    )
    assert result.returncode == 0, result.stderr
    assert summary["sink"]["dropped"] == 0
    if variant and next(v for v in loader.load(name).variants if v.name == variant).mitigation:
        assert_mitigation_changes_signature(name, run_dir)


@pytest.mark.parametrize(
    ("name", "control"), CONTROLS, ids=[f"{n}:control:{c}" for n, c in CONTROLS]
)
def test_signature_fails_on_control(name, control, builtin_runs, report_line):
    result, _, summary = builtin_runs.result(name, control)
    [spec] = [c for c in loader.load(name).controls if c.name == control]
    verdicts = summary["expectations"]
    failed = [v["label"] for v in verdicts if not v["passed"]]
    report = "\n".join(
        f"  {'FAIL' if not v['passed'] else 'pass'}  {v['label']}: observed {v.get('observed')}"
        for v in verdicts
    )
    report_line(f"{name} control {control}: the signature fails on {failed}")
    print(report)
    assert failed, f"the {name} signature holds on control {control!r}:\n{report}"
    missing = [label for label in spec.fails if label not in failed]
    assert not missing, (
        f"control {control!r} must fail {missing} but they passed:\n{report}\n"
        + result.stdout[-2000:]
    )
    assert result.returncode == 10, result.stderr
    assert summary["sink"]["dropped"] == 0


def assert_mitigation_changes_signature(name: str, run_dir: Path) -> None:
    plain = loader.load(name)
    points = read_points(run_dir / "samples.lp")
    timeline = run_timeline(read_journal(run_dir / "journal.jsonl"), points)
    verdicts = evaluate(plain, points, timeline)  # type: ignore[arg-type]
    assert not all(v.passed for v in verdicts), (
        f"the plain {name} signature still holds under the mitigation: "
        + "; ".join(v.describe() for v in verdicts)
    )
