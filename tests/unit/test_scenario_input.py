"""Input that cannot hurt: every malformed scenario file or command line exits 2 with its
line and a fix, no traceback, before anything is built; `validate` reports every problem of
every file in one pass."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chaos.cli import main
from chaos.scenario import loader


def validate(capsys, *args: str) -> tuple[int, str]:
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write(tmp_path: Path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def test_binary_and_latin1_files_are_refused_with_their_line(tmp_path, capsys):
    binary = write(tmp_path, "bin.yaml", b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00")
    latin1 = write(tmp_path, "latin1.yaml", "name: x\ndescription: caf\xe9\n".encode("latin-1"))
    code, text = validate(capsys, binary, latin1)
    assert code == 2
    assert "bin.yaml:1: <root>: not UTF-8 text: byte 0xff at offset 8" in text
    assert "latin1.yaml:2: <root>: not UTF-8 text: byte 0xe9" in text
    assert "Traceback" not in text and "fix:" in text


def test_a_file_over_the_size_cap_is_refused_unless_allowed(tmp_path, capsys, monkeypatch):
    big = write(tmp_path, "big.yaml", "name: big\n" + "# padding\n" * 110_000)  # 1.1 MB
    code, text = validate(capsys, big)
    assert code == 2 and "larger than 1,048,576 bytes" in text and loader.MAX_BYTES_ENV in text
    small = write(tmp_path, "small.yaml", "name: small\n" + "# padding\n" * 20)
    monkeypatch.setenv(loader.MAX_BYTES_ENV, "100")
    code, text = validate(capsys, "--other-host", small)
    assert code == 2 and "larger than 100 bytes" in text
    monkeypatch.setenv(loader.MAX_BYTES_ENV, "1000")
    code, text = validate(capsys, "--other-host", small)
    assert code == 0, text


BOMB = "name: bomb\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def test_billion_laughs_is_refused_within_a_second(tmp_path, capsys):
    path = write(tmp_path, "bomb.yaml", BOMB)  # 9**10 = 3.5 billion leaves
    start = time.monotonic()
    code, text = validate(capsys, path)
    elapsed = time.monotonic() - start
    assert code == 2 and "aliases expand to more than 100,000 YAML nodes" in text, text
    assert elapsed < 1.0, elapsed
    assert "bomb.yaml:" in text


def test_aliases_within_the_budget_still_work_and_duplicates_are_found_once(tmp_path):
    text = """\
name: aliased
lab:
  client: &side {sysctls: {net.ipv4.tcp_fin_timeout: 30}}
  origin: {sysctls: {net.ipv4.tcp_fin_timeout: 30}}
  proxy: {kind: haproxy, kind: nginx}
"""
    with pytest.raises(loader.ScenarioError) as caught:
        loader.parse(text, "a.yaml")
    assert [(p.line, p.message) for p in caught.value.problems] == [(5, "duplicate key")]
    assert loader.parse(text.replace(", kind: nginx", ""), "a.yaml").lab.client.sysctls


def test_deep_nesting_is_a_clear_error(tmp_path, capsys):
    code, text = validate(capsys, write(tmp_path, "deep.yaml", "name: x\nd: " + "[" * 5000))
    assert code == 2 and "Traceback" not in text


def test_every_problem_in_one_pass_with_its_line(tmp_path, capsys):
    path = write(
        tmp_path,
        "bad.yaml",
        """\
name: bad
lab:
  client:
    sysctls: {net.ipv4.ip_local_port_range: [1, 70000], vm.swappiness: 1, kernel.x: 2}
  proxy: {kind: haproxy, threadz: 2}
faults:
  - {type: stop, target: database, at: 1s, for: 2s}
  - {type: stop, target: "pid:abc", at: 1s, for: 2s}
  - {type: stop, target: "origin:([", at: 1s, for: 2s}
  - {type: stop, target: proxy, at: 1s, for: 2s, every: 1s}
expect:
  - {metric: tcp_states.closewait, op: "<=", value: 5}
""",
    )
    code, text = validate(capsys, "--other-host", path)
    assert code == 2
    for expected in (
        "bad.yaml:4: lab.client.sysctls: 'vm.swappiness', 'kernel.x' are not",
        "bad.yaml:4: lab.client.sysctls.net.ipv4.ip_local_port_range: net.ipv4.ip_local_port_"
        "range [1, 70000] is out of bounds",
        "bad.yaml:5: lab.proxy.threadz: unknown key 'threadz'; did you mean 'threads'?",
        "bad.yaml:7: faults[0].target: target 'database' names nothing in this lab",
        "bad.yaml:8: faults[1].target: target 'pid:abc': pid:N needs a process number",
        "bad.yaml:9: faults[2].target: target 'origin:([': the pattern '([' does not compile (RE2)",
        "bad.yaml:10: faults[3]: `for` must not exceed `every`",  # timing, beside model errors
        "bad.yaml:12: expect[0].metric: metric 'tcp_states.closewait': tcp_states has no field "
        "'closewait'; did you mean tcp_states.close_wait?",
    ):
        assert expected in text, (expected, text)


def test_validate_reports_every_missing_file(tmp_path, capsys):
    code, text = validate(capsys, "a.yaml", "smoke", "b.yaml", "c.yaml")
    assert code == 2
    assert "ok  smoke" in text
    assert all(f"named '{name}'" in text for name in ("a.yaml", "b.yaml", "c.yaml"))


def test_targets_of_an_external_lab_and_its_ignored_keys(tmp_path, capsys):
    path = write(
        tmp_path,
        "ext.yaml",
        """\
name: ext
lab:
  proxy: {kind: external, address: "10.1.2.3:80", port: 81, threads: 2, sysctls: {}}
faults:
  - {type: stop, target: proxy, at: 1s, for: 2s}
""",
    )
    code, text = validate(capsys, "--other-host", path)
    assert code == 2
    assert "address '10.1.2.3:80' is off the lab" in text
    assert "target 'proxy': this lab has no proxy namespace" in text
    fixed = Path(path).read_text().replace("10.1.2.3", "198.18.1.1")
    code, text = validate(capsys, "--other-host", write(tmp_path, "ext2.yaml", fixed))
    assert "port, sysctls, threads would be ignored" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--name", "BAD NAME!"], "--name 'BAD NAME!'"),
        (["--workers", "0"], "--workers 0"),
        (["--workers", "-3"], "--workers -3"),
        (["--variant", ""], "--variant needs a variant's name"),
        (["--duration", "0s"], "--duration '0s': must be longer than 0"),
        (["--duration", "soon"], "--duration 'soon'"),
        (["--rate", "0"], "--rate 0"),
        (["--users", "0"], "--users 0"),
    ],
)
def test_run_flags_are_checked_before_anything_is_built(tmp_path, capsys, flags, message):
    runs = tmp_path / "runs"
    code = main(["run", "smoke", "--runs-dir", str(runs), *flags])
    text = capsys.readouterr().err
    assert code == 2 and message in text and "fix:" in text, text
    assert not runs.exists()


def test_unknown_scenario_name_exits_2(tmp_path, capsys):
    assert main(["run", "no-such-scenario", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no scenario file or builtin scenario named 'no-such-scenario'" in err
