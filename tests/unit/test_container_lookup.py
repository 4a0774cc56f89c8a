"""``chaos collect --container NAME``: what the engine's CLI says, turned into a pid or a
clear error. No container engine runs on these machines (only Docker's client is installed),
so the CLI here is a stand-in script on PATH (``tests/container_cli.py``); the "engine
down" case uses the real client when it is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from container_cli import docker_stand_in

from chaos.errors import LabError
from chaos.kernel.nsref import container_pid


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: str, code: int) -> None:
    docker_stand_in(tmp_path / "bin", "web", stdout, code)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


def test_a_running_container_gives_its_pid(tmp_path, monkeypatch):
    stand_in(tmp_path, monkeypatch, "4242", 0)
    assert container_pid("web") == 4242


@pytest.mark.parametrize(
    ("stdout", "code", "message"),
    [
        ("Error: No such container: web", 1, "docker has no container 'web'"),
        ("0", 0, "container 'web' is not running"),
        ("permission denied while trying to connect", 1, "failed: permission denied"),
    ],
)
def test_engine_answers_become_clear_errors(tmp_path, monkeypatch, stdout, code, message):
    stand_in(tmp_path, monkeypatch, stdout, code)
    with pytest.raises(LabError) as info:
        container_pid("web")
    assert message in info.value.message
    assert info.value.hint


def test_no_engine_cli_at_all(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="neither docker nor podman") as info:
        container_pid("web")
    assert "--pid" in (info.value.hint or "")


@pytest.mark.skipif(
    not shutil.which("docker") or os.path.exists("/var/run/docker.sock"),
    reason="needs Docker's client without a reachable engine",
)
def test_real_docker_client_without_an_engine():
    with pytest.raises(LabError, match="docker inspect web` failed") as info:
        container_pid("web")
    assert "engine is running" in (info.value.hint or "")
