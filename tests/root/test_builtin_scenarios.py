"""Every built-in pathology, and every mitigation variant, run for real and judged.

Each run must pass all its own expectations (the signature, or the mitigation's effect).
A mitigation must also *change* the signature: the plain scenario's expectations, checked
against the variant's own samples, must not all pass. So an expectation that passes
whatever happens cannot hide here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.expect import evaluate, run_timeline
from chaos.record.journal import read_journal
from chaos.record.lineproto import read_points
from chaos.scenario import loader

PATHOLOGIES = [name for name in loader.builtin_names() if name != "smoke"]
CASES: list[tuple[str, str | None]] = [
    (name, variant)
    for name in PATHOLOGIES
    for variant in [None, *(v.name for v in loader.load(name).variants)]
]


def test_every_pathology_has_expectations_and_a_mitigation():
    assert len(PATHOLOGIES) >= 5
    for name in PATHOLOGIES:
        scenario = loader.load(name)
        assert scenario.expect, f"{name} asserts nothing"
        assert scenario.variants, f"{name} declares no mitigation"


@pytest.mark.parametrize(
    ("name", "variant"), CASES, ids=[f"{n}:{v or 'plain'}" for n, v in CASES]
)
def test_scenario_signature(name, variant, chaos_cli, tmp_path, lab_name):
    args = ["run", name, "--name", lab_name, "--runs-dir", str(tmp_path), "--no-report"]
    if variant:
        args += ["--variant", variant]
    result = chaos_cli(*args, timeout=240)
    [run_dir] = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    verdicts = summary["expectations"]
    failed = [v for v in verdicts if not v["passed"]]
    assert verdicts and not failed, (
        f"exit {result.returncode}; failed: {failed}\n{result.stdout[-3000:]}\n{result.stderr}"
    )
    assert result.returncode == 0, result.stderr
    assert summary["sink"]["dropped"] == 0
    if variant:
        assert_mitigation_changes_signature(name, run_dir)


def assert_mitigation_changes_signature(name: str, run_dir: Path) -> None:
    plain = loader.load(name)
    points = read_points(run_dir / "samples.lp")
    timeline = run_timeline(read_journal(run_dir / "journal.jsonl"), points)
    verdicts = evaluate(plain, points, timeline)  # type: ignore[arg-type]
    assert not all(v.passed for v in verdicts), (
        f"the plain {name} signature still holds under the mitigation: "
        + "; ".join(v.describe() for v in verdicts)
    )
