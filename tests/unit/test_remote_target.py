"""Target resolution tells a target on an agent from one in the lab, and hands the first to
the remote fault (no lab, no agent needed: an agent URL resolves without either)."""

from __future__ import annotations

import pytest

from chaos.agent.client import RemoteFault, agent_clients
from chaos.errors import FaultError
from chaos.faults.base import RemoteTarget, Target
from chaos.faults.engine.schedule import check_offline, overlap_warnings
from chaos.faults.engine.targets import local_fault_type, resolve, validate_fault
from chaos.faults.registry import fault_type
from chaos.lab.topology import LabState
from chaos.scenario.model import FaultSpec

NO_LAB = LabState(name="remote", namespaces={})


def test_an_agent_url_resolves_to_a_remote_target():
    target = resolve(" https://198.18.3.2:7700/origin%3Ahaproxy ", NO_LAB)
    assert target == RemoteTarget("https://198.18.3.2:7700", "origin:haproxy")
    assert target.name == "https://198.18.3.2:7700/origin:haproxy"


@pytest.mark.parametrize("text", ["http://198.18.3.2:7700", "http:///origin", "https://"])
def test_an_agent_url_without_a_part_is_a_clear_error(text):
    with pytest.raises(FaultError, match="expected http://HOST:PORT/TARGET"):
        resolve(text, NO_LAB)


def test_a_lab_target_is_not_remote():
    with pytest.raises(FaultError, match="fault target 'origin': unknown target"):
        resolve("origin", NO_LAB)
    assert local_fault_type("stop", "origin") is fault_type("stop")
    assert local_fault_type("stop", "http://198.18.3.2:7700/origin") is None


def test_the_remote_fault_takes_only_a_remote_target():
    with pytest.raises(FaultError, match="not a fault type of its own"):
        validate_fault("remote", Target("origin", "ns"), {})
    with pytest.raises(FaultError, match="no agent token"):
        validate_fault("stop", RemoteTarget("http://127.0.0.1:9", "origin"), {"token_env": "X_"})
    assert fault_type("remote") is RemoteFault  # ledger entries of remote faults revert


def test_offline_checks_leave_faults_on_agents_to_their_agent():
    on_agent = FaultSpec(type="no-such-type", target="http://198.18.3.2:7700/origin", at=1)
    check_offline(on_agent)  # the agent checks type and params
    with pytest.raises(FaultError, match="unknown fault type"):
        check_offline(on_agent.model_copy(update={"target": "origin"}))
    stops = [FaultSpec(type="stop", target="http://198.18.3.2:7700/proxy", at=1)] * 2
    assert overlap_warnings(stops, 10) == []


def test_the_controller_waits_for_each_agent_once():
    url = "https://198.18.3.2:7700"
    specs = [
        FaultSpec(type="stop", target=f"{url}/origin", at=1, params={"token_env": "NO_SUCH_"}),
        FaultSpec(type="kill", target=f"{url}/proxy", at=2),
        FaultSpec(type="stop", target="origin", at=3),
    ]
    assert [client.base for client in agent_clients(specs)] == [url]
