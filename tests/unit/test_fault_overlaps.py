"""`chaos validate` warns about faults that stack: overlapping sysctl windows on one key,
overlapping stops of one target (allowed: the last one out restores the original)."""

from __future__ import annotations

from pathlib import Path

from chaos.faults.engine.schedule import overlap_warnings
from chaos.scenario import loader

SCENARIO = """\
name: overlap
duration: 30s
faults:
  - type: sysctl
    target: origin
    at: 2s
    for: {first_for}
    params: {{values: {{net.ipv4.tcp_fin_timeout: 10}}}}
  - type: sysctl
    target: origin
    at: 5s
    for: 10s
    params: {{values: {{net.ipv4.tcp_fin_timeout: 20, net.ipv4.tcp_tw_reuse: 1}}}}
  - type: sysctl
    target: proxy
    at: 0s
    params: {{values: {{net.ipv4.tcp_fin_timeout: 30}}}}
  - type: stop
    target: origin
    at: 1s
    every: 10s
    for: 2s
  - type: stop
    target: origin
    at: {second_stop}
    for: 3s
"""


def write(tmp_path: Path, **fields: str) -> Path:
    path = tmp_path / "overlap.yaml"
    path.write_text(SCENARIO.format(**fields))
    return path


def test_overlapping_stacking_faults_are_warned_about(chaos_cli, tmp_path):
    result = chaos_cli("validate", str(write(tmp_path, first_for="10s", second_stop="20s")))
    code, out = result.returncode, result.stdout
    assert code == 0, out
    assert out.count("warning:") == 2, out
    assert "faults[0] and faults[1] (sysctl on origin: net.ipv4.tcp_fin_timeout) overlap " \
           "from 5s to 12s" in out  # fmt: skip
    assert "faults[3] and faults[4] (stop on origin: the processes) overlap from 21s to 23s" in out


def test_windows_that_do_not_overlap_are_not_warned_about(tmp_path):
    # control: the first window ends before the second starts; the repeated stop's windows
    # (1-3, 11-13, 21-23 s) miss the other stop (24-27 s); other targets never count
    scenario = loader.load(str(write(tmp_path, first_for="3s", second_stop="24s")))
    assert overlap_warnings(scenario.faults, scenario.duration) == []
