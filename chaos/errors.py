"""The one exception tree of the project.

Every error a user can cause or fix derives from :class:`ChaosError`. The CLI prints
``error: <message>`` and, when there is one, ``fix: <hint>``, then exits with
``exit_code`` and no traceback. Anything else that escapes is a bug and keeps its traceback.

    ChaosError                 exit 1
    ├── ScenarioError          exit 2  invalid scenario file (carries every problem found)
    ├── UsageError             exit 2  a bad flag value or an unknown scenario name
    ├── NotRootError           exit 3  the command needs root
    ├── CapabilityError        exit 4  the kernel or host lacks a feature (netem, nftables, ...)
    ├── LabError               exit 5  building, finding or tearing down a lab
    │   └── ProcessStartError          a process of the lab (proxy, origin) failed to start
    ├── SysctlError            exit 5  unknown, read-only or rejected sysctl
    ├── LoadError              exit 6  Locust master or workers
    ├── FaultError             exit 7  a fault could not be applied or reverted
    ├── SinkError              exit 8  InfluxDB or the run directory
    └── ExpectationFailed      exit 10 the run finished but an expectation did not hold
"""

from __future__ import annotations

from dataclasses import dataclass


class ChaosError(Exception):
    """Base of all user errors: a message saying what is wrong, a hint saying how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One problem in a scenario file: where it is and what is wrong."""

    path: str
    line: int | None
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ScenarioError(ChaosError):
    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        count = len(problems)
        lines = "\n".join("  " + p.render(source) for p in problems)
        hint = "fix the fields named above; `chaos schema` prints every allowed field"
        if any("faults[" in p.path for p in problems):
            hint += ", `chaos faults types` every fault type and its params"
        super().__init__(
            f"{source}: {count} problem{'s' if count != 1 else ''} in the scenario\n{lines}", hint
        )


class UsageError(ChaosError):
    """A flag's value or a scenario name on the command line is wrong; nothing was built."""

    exit_code = 2


class NotRootError(ChaosError):
    exit_code = 3


class CapabilityError(ChaosError):
    exit_code = 4


class LabError(ChaosError):
    exit_code = 5


class ProcessStartError(LabError):
    pass


class SysctlError(ChaosError):
    exit_code = 5


class LoadError(ChaosError):
    exit_code = 6


class FaultError(ChaosError):
    exit_code = 7


class SinkError(ChaosError):
    exit_code = 8


class ExpectationFailed(ChaosError):
    exit_code = 10
