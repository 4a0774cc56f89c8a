"""The reload and restart faults on each proxy kind, for real (HAProxy's under load is the
built-in proxy-restart scenario): nginx and Caddy reload and keep serving, a restart puts a
new process in the lab's record, and `lab down` leaves nothing of either."""

from __future__ import annotations

import textwrap
import time

import pytest
from test_lab import requests_from_client

from chaos.faults.engine.targets import resolve
from chaos.faults.registry import fault_type
from chaos.kernel.proctree import children
from chaos.lab import lab, topology
from chaos.lab.topology import LabState
from chaos.record.rundir import RunDir
from chaos.scenario import loader


def lab_with(kind: str, tmp_path, lab_name):
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: reload
        lab:
          client: {{addresses: 1}}
          proxy: {{kind: {kind}, threads: 2}}
        """)
    )
    run = RunDir.create("reload", tmp_path)
    return lab.up(loader.load(str(path)), lab_name, run), run


def apply(kind: str, state: LabState) -> dict:
    fault = fault_type(kind).validate(resolve("proxy", state), {})
    handle = fault.prepare()
    fault.apply(handle)
    return handle.data


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
def test_reload_and_restart_keep_the_proxy_serving(kind, tmp_path, lab_name):
    state, run = lab_with(kind, tmp_path, lab_name)
    try:
        assert all(r.startswith(b"HTTP/1.1 200") for r in requests_from_client(state, 3))
        before = apply("reload", state)
        main = before["pid"]
        if kind == "nginx":  # new workers under the same master; the old ones drained
            assert before["proxy"] == "nginx" and len(before["workers"]) == 2
            assert set(children(main)) - set(before["workers"])  # new ones at once
            deadline = time.monotonic() + 10  # the old ones exit once idle
            while set(children(main)) & set(before["workers"]):
                assert time.monotonic() < deadline, "nginx's old workers did not drain"
                time.sleep(0.05)
        assert state.process("proxy").alive()
        assert all(r.startswith(b"HTTP/1.1 200") for r in requests_from_client(state, 3))

        apply("restart", state)
        now = LabState.load(lab_name)
        record = now.process("proxy")
        assert record.pid != main and record.alive()
        assert all(r.startswith(b"HTTP/1.1 200") for r in requests_from_client(now, 3))
    finally:
        lab.down(lab_name)
        run.close()
    assert not record.alive()
    assert not topology.orphan_namespaces(lab_name)


def test_reload_refuses_a_target_that_is_not_a_proxy(tmp_path, lab_name):
    from chaos.errors import FaultError

    state, run = lab_with("haproxy", tmp_path, lab_name)
    try:
        with pytest.raises(FaultError, match="not a proxy"):
            fault_type("reload").validate(resolve("origin", state), {})
    finally:
        lab.down(lab_name)
        run.close()
