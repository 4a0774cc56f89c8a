"""The load: Locust master and workers running the locustfiles against the lab.

:mod:`.contract` is what the locustfiles accept (options, teardown modes, rate steps; shared
with them, stdlib only); :mod:`.options` turns a scenario's ``load:`` into their arguments;
:mod:`.runner` starts and stops Locust (never importing it: gevent patches a process);
:mod:`.series` reads the per-second load series they write.
"""

__all__ = ["contract", "options", "runner", "series"]
