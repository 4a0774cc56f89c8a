"""The sink: the run directory's ``samples.lp`` and, when configured, InfluxDB.

==========================  ===============================================================
module                      what
==========================  ===============================================================
:mod:`.sink`                :class:`Sink`: every sample to ``samples.lp``, annotations
:mod:`.influx`              delivery to InfluxDB: batches, retries, spool, error callback
:mod:`.spool`               the on-disk spool of undelivered points (``spool.lp``)
:mod:`.config`              URL, org, bucket and token from flags, scenario, environment
:mod:`.push`                ``chaos push RUN_DIR``: backfill a run
==========================  ===============================================================
"""

from __future__ import annotations

from chaos.sink.config import InfluxConfig, InfluxFlags, resolve_influx
from chaos.sink.sink import SAMPLES_FILE, Sink, SinkStats

__all__ = ["SAMPLES_FILE", "InfluxConfig", "InfluxFlags", "Sink", "SinkStats", "resolve_influx"]
