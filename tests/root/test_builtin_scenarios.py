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

import json
from pathlib import Path

import pytest

from chaos.expect import Timeline, evaluate
from chaos.record.lineproto import read_points
from chaos.record.rundir import read_journal
from chaos.scenario import loader

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


@pytest.mark.parametrize(
    ("name", "variant"), CASES, ids=[f"{n}:{v or 'plain'}" for n, v in CASES]
)
def test_scenario_signature(name, variant, chaos_cli, tmp_path, lab_name):
    result, run_dir, summary = run_builtin(chaos_cli, tmp_path, lab_name, name, variant)
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
def test_signature_fails_on_control(name, control, chaos_cli, tmp_path, lab_name):
    result, _, summary = run_builtin(chaos_cli, tmp_path, lab_name, name, control)
    [spec] = [c for c in loader.load(name).controls if c.name == control]
    verdicts = summary["expectations"]
    failed = [v["label"] for v in verdicts if not v["passed"]]
    report = "\n".join(
        f"  {'FAIL' if not v['passed'] else 'pass'}  {v['label']}: observed {v.get('observed')}"
        for v in verdicts
    )
    print(f"{name} control {control}: the plain signature fails on {failed}\n{report}")
    assert failed, f"the {name} signature holds on control {control!r}:\n{report}"
    missing = [label for label in spec.fails if label not in failed]
    assert not missing, (
        f"control {control!r} must fail {missing} but they passed:\n{report}\n"
        + result.stdout[-2000:]
    )
    assert result.returncode == 10, result.stderr
    assert summary["sink"]["dropped"] == 0


def run_builtin(chaos_cli, tmp_path: Path, lab_name: str, name: str, variant: str | None):
    args = ["run", name, "--name", lab_name, "--runs-dir", str(tmp_path), "--no-report"]
    if variant:
        args += ["--variant", variant]
    result = chaos_cli(*args, timeout=240)
    [run_dir] = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    return result, run_dir, summary


def assert_mitigation_changes_signature(name: str, run_dir: Path) -> None:
    plain = loader.load(name)
    points = read_points(run_dir / "samples.lp")
    timeline = Timeline.from_journal(read_journal(run_dir / "journal.jsonl"))
    verdicts = evaluate(plain, points, timeline)  # type: ignore[arg-type]
    assert not all(v.passed for v in verdicts), (
        f"the plain {name} signature still holds under the mitigation: "
        + "; ".join(v.describe() for v in verdicts)
    )
