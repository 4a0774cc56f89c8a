"""The reload/restart faults' process bookkeeping and the generations collector, on real
processes (a shell and its children stand in for a master and its workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from chaos.collect.generations import ProxyGenerations
from chaos.collect.process import ProcessCpu
from chaos.errors import FaultError
from chaos.faults.base import Target
from chaos.faults.engine.schedule import check_offline
from chaos.faults.registry import fault_type
from chaos.faults.reload import _fresh_argv
from chaos.kernel.nsref import NetnsRef
from chaos.kernel.proctree import children
from chaos.scenario.model import FaultSpec


def test_restart_drops_what_a_reload_added_to_the_command():
    argv = ["/usr/sbin/haproxy", "-W", "-db", "-f", "x.cfg", "-x", "/s.sock", "-sf", "12", "13"]
    assert _fresh_argv(argv) == ["/usr/sbin/haproxy", "-W", "-db", "-f", "x.cfg"]


def test_reload_and_restart_are_one_shot_and_repeat_with_every():
    check_offline(FaultSpec(type="reload", target="proxy", at=2, every=3))
    with pytest.raises(FaultError, match="cannot be reverted: remove `for`"):
        check_offline(FaultSpec(type="restart", target="proxy", at=2, **{"for": 1}))


def test_reload_refuses_a_process_that_is_not_a_proxy():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(FaultError, match="is sleep, not a proxy"):
            fault_type("reload").validate(Target("proxy", None, pids=(sleeper.pid,)), {})
    finally:
        sleeper.kill()
        sleeper.wait()


# A stand-in master: two workers; on SIGHUP two new workers, and the old ones exit 0.6 s later
MASTER = """
import signal, subprocess, sys, threading, time
workers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
def reload(*_):
    global workers
    old, workers = workers, [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    def drain():
        time.sleep(0.6)
        for w in old:
            w.kill(); w.wait()
    threading.Thread(target=drain).start()
signal.signal(signal.SIGHUP, reload)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_generations_follow_a_reload_and_its_drain():
    master = subprocess.Popen(
        [sys.executable, "-c", MASTER], stdout=subprocess.PIPE, text=True
    )
    collector = ProxyGenerations(NetnsRef.host(), lambda: master.pid, tags={"role": "proxy"})
    try:
        assert master.stdout is not None and master.stdout.readline() == "ready\n"
        (point,) = collector.sample(time.time())
        assert (point.fields["workers"], point.fields["generations"]) == (2, 0)
        os.kill(master.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while len(children(master.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        (point,) = collector.sample(time.time())
        assert point.fields["workers"] == 2 and point.fields["old_workers"] == 2
        assert point.fields["generations"] == 1 and point.fields["old_sockets"] == 0
        time.sleep(1.0)  # the old ones have exited
        (point,) = collector.sample(time.time())
        assert (point.fields["workers"], point.fields["old_workers"]) == (2, 0)
        assert 0.5 <= point.fields["last_drain_s"] <= 2.0
    finally:
        collector.close()
        for pid in children(master.pid):
            os.kill(pid, signal.SIGKILL)
        master.kill()
        master.wait()


def test_process_cpu_follows_a_restarted_process():
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        cpu = ProcessCpu(gone.pid, netns="host", follow=lambda: live.pid)
        (point,) = cpu.sample(time.time())
        assert point.tags["pid"] == str(live.pid) and point.fields["threads"] == 1
        assert ProcessCpu(gone.pid, netns="host").sample(time.time()) == []
    finally:
        live.kill()
        live.wait()
