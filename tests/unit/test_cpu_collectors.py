"""The CPU a sweep judges the load generator by: every Locust process of a namespace (found
by its command line, each bound to one core) and the host's idle and steal time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from chaos.collect.process import HostCpu, LoadGeneratorCpu

BURN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"


def test_locust_processes_of_the_namespace_are_found_and_measured() -> None:
    # a CPU-bound process whose command line reads like a Locust worker's, and one that
    # does not: only the first is the load generator
    worker = subprocess.Popen([sys.executable, "-c", BURN, "locust", "-f", "x.py", "--worker"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "--worker"])
    try:
        collector = LoadGeneratorCpu("/proc/self/ns/net", netns="host", tags={"role": "client"})
        proc = psutil.Process(worker.pid)

        def ours(now: float) -> dict:
            # (other Locust processes of the host namespace may show up too: look at ours)
            [point] = [p for p in collector.sample(now) if p.tags["pid"] == str(worker.pid)]
            assert point.tags["process"] == "locust-worker" and point.tags["role"] == "client"
            return point.fields

        t1, cpu1 = time.time(), sum(proc.cpu_times()[:2])
        assert "busy" not in ours(t1)  # the first sample has no interval yet
        time.sleep(1.0)
        t2, cpu2 = time.time(), sum(proc.cpu_times()[:2])
        fields = ours(t2)
        assert not any(p.tags["pid"] == str(other.pid) for p in collector.sample(t2 + 1))
        # against psutil's reading of the same process (an independent parser)
        assert abs(fields["cpu_s"] - cpu2) < 0.05
        # busy is over one core: the share of one core it used, whatever its threads
        assert fields["busy"] == round(fields["cpu_pct"] / 100, 4)
        assert abs(fields["busy"] - (cpu2 - cpu1) / (t2 - t1)) < 0.1
        assert fields["busy"] > 0.01  # it spins
    finally:
        for proc in (worker, other):
            proc.kill()
            proc.wait()


def test_other_namespaces_are_not_searched() -> None:
    collector = LoadGeneratorCpu("/nonexistent/ns", netns="x")
    assert collector.sample(time.time()) == [] and collector.sample(time.time() + 9) == []


def test_host_idle_and_steal_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # cpu user nice system idle iowait irq softirq steal
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1\ncpu1 1\n")
    host = HostCpu(stat_path=str(stat))
    assert host.sample(1.0) == []
    stat.write_text("cpu  400 0 200 750 100 0 0 150 0 0\ncpu0 1\ncpu1 1\n")
    [point] = host.sample(2.0)
    # 600 jiffies passed: 50 idle, 150 steal, 400 busy
    assert point.fields == {"idle": round(50 / 600, 4), "steal": 0.25,
                            "busy": round(400 / 600, 4), "cpus": 2}  # fmt: skip


def test_host_cpu_agrees_with_psutil() -> None:
    host = HostCpu()
    host.sample(time.time())
    psutil.cpu_times_percent(None)
    time.sleep(0.5)
    [point] = host.sample(time.time())
    theirs = psutil.cpu_times_percent(None)
    assert abs(point.fields["idle"] - (theirs.idle + theirs.iowait) / 100) < 0.1
    assert point.fields["cpus"] == psutil.cpu_count()
