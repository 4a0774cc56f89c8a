"""The reload and restart faults on each proxy kind, for real (HAProxy's under load is the
built-in proxy-restart scenario): nginx and Caddy reload and keep serving, a restart puts a
new process in the lab's record, and `lab down` leaves nothing of either; HAProxy reloads
through `chaos agent` too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_lab import requests_from_client

from chaos.faults.engine.targets import resolve
from chaos.faults.registry import fault_type
from chaos.kernel import netns
from chaos.kernel.proctree import children
from chaos.lab import lab, topology
from chaos.lab.topology import LabState
from chaos.record.rundir import RunDir
from chaos.scenario import loader

CHAOS = str(Path(sys.executable).parent / "chaos")


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


def test_haproxy_reloads_through_the_agent(tmp_path, lab_name):
    """`chaos agent` in the proxy's namespace, allowed only `reload` on the proxy, reloads
    HAProxy on request from the client's side of the lab: a new worker under the same
    master, the old one gone once idle, the proxy serving throughout."""
    state, run = lab_with("haproxy", tmp_path, lab_name)
    token = "reload-through-the-agent-0123456789abcdef"
    (tmp_path / "token").write_text(token + "\n")
    argv = [CHAOS, "agent", "--token-file", str(tmp_path / "token"), "--lab", lab_name]
    argv += ["--listen", f"{state.proxy['host']}:0", "--allow", "proxy"]
    argv += ["--allow-type", "proxy=reload"]
    env = {**os.environ, "CHAOS_LEDGER_DIR": str(tmp_path / "ledger")}
    agent = netns.popen(
        state.namespaces["proxy"], argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline()
        assert "listening on http" in line, line
        faults = line.split("listening on ")[1].split("/v1")[0] + "/v1/faults"
        master = state.process("proxy").pid
        workers = set(children(master))
        assert workers

        def post(kind: str) -> tuple[int, dict]:
            body = json.dumps({"type": kind, "target": "proxy", "params": {}}).encode()
            req = urllib.request.Request(
                faults, data=body, method="POST", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=20) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        client = state.namespaces["client"]
        assert netns.run_in(client, lambda: post("restart"))[0] == 403  # only reload allowed
        status, answer = netns.run_in(client, lambda: post("reload"))
        assert status == 201, answer
        assert set(children(master)) - workers, "no new HAProxy worker after the reload"
        deadline = time.monotonic() + 10  # the old worker exits once its connections are done
        while set(children(master)) & workers:
            assert time.monotonic() < deadline, "HAProxy's old worker did not exit"
            time.sleep(0.05)
        assert state.process("proxy").pid == master
        assert all(r.startswith(b"HTTP/1.1 200") for r in requests_from_client(state, 3))
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
        lab.down(lab_name)
        run.close()
    assert agent.returncode in (0, 143), agent.returncode
