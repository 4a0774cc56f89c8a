"""A fault controller for the agent tests: runs a FaultSchedule whose targets are agent URLs.

    python tests/agent_controller.py SPECS_JSON JOURNAL

Prints ``started`` once the schedule runs, waits for a line on stdin, stops the schedule
(reverting everything) and prints ``stopped``; a FaultError prints ``error: ...`` and exits 7.
The token comes from the environment (the variable each spec's params.token_env names).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chaos.errors import FaultError
from chaos.faults.engine.schedule import FaultSchedule
from chaos.lab.topology import LabState
from chaos.record.journal import Journal
from chaos.scenario.model import FaultSpec


def main(specs_json: str, journal_path: str) -> int:
    specs = [FaultSpec.model_validate(s) for s in json.loads(specs_json)]
    journal = Journal(Path(journal_path))
    schedule = FaultSchedule(specs, LabState(name="remote", namespaces={}), journal)
    try:
        schedule.validate()
        schedule.start()
        print("started", flush=True)
        sys.stdin.readline()
        schedule.stop()
    except FaultError as exc:
        print(f"error: {exc.message}", flush=True)
        return exc.exit_code
    finally:
        journal.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
