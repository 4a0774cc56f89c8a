"""The fault engine: a run's faults in time, always reverted.

:mod:`.schedule` checks a scenario's faults (offline and against the lab) and applies them
on their timeline; :mod:`.guard` applies and reverts each one (LIFO on every way out);
:mod:`.ledger` keeps every applied fault on disk for ``chaos revert-all`` after a SIGKILL;
:mod:`.targets` turns a target name (a role, ``pid:N``, ``ROLE:PATTERN``) into a lab
``Target``, or an agent URL into a ``RemoteTarget`` for the remote fault; :mod:`.view`
shows the ledger, the reverts and the fault types in the terminal.
"""

__all__ = ["guard", "ledger", "schedule", "targets", "view"]
