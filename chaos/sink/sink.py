"""The run's sink: every sample into ``samples.lp`` and, when configured, into InfluxDB.

``samples.lp`` in the run directory is the complete record (one line-protocol line per point,
flushed per batch), whatever happens to InfluxDB: ``chaos push RUN_DIR`` replays it.

InfluxDB is checked once, synchronously, when the sink opens (a first write of a
``chaos_event`` point): a wrong URL, token, org or bucket, or a server that is down, is a
:class:`SinkError` before the lab is built. If the server goes away later, the run goes on:
points are spooled to ``spool.lp`` in the run directory, a warning is printed and journaled,
and the spool is replayed when the server answers again (see :mod:`chaos.sink.influx`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chaos.record.journal import Journal
from chaos.record.point import FieldValue, Sample, to_line
from chaos.record.rundir import RunFiles
from chaos.sink.config import InfluxConfig
from chaos.sink.influx import BATCH_LINES, DeliveryStats, InfluxWriter

log = logging.getLogger(__name__)

SAMPLES_FILE = RunFiles.SAMPLES
EVENT_MEASUREMENT = "chaos_event"
EVENT_TAGS = ("id", "kind", "target", "role")  # annotate() keywords that become tags


@dataclass
class SinkStats(DeliveryStats):
    """Points by fate. ``recorded``: lines in samples.lp; the rest is InfluxDB delivery
    (``written`` includes ``replayed``; ``left_in_spool`` were not delivered by close)."""

    recorded: int = 0
    influxdb: str | None = None

    def as_dict(self) -> dict[str, int | str | None]:  # type: ignore[override]
        return asdict(self)


class Sink:
    """Takes samples from any thread; :meth:`write` never waits for the network.

    ``tags`` (the run id and scenario) go on every point; samples bring their own ``netns``
    and ``role``. ``on_error`` hears about outages and rejected points (from the writer
    thread). Extra keyword arguments tune :class:`~chaos.sink.influx.InfluxWriter`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        tags: dict[str, str],
        influx: InfluxConfig | None = None,
        journal: Journal | None = None,
        on_error: Callable[[str], None] | None = None,
        **writer_options: Any,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / SAMPLES_FILE
        self.tags = dict(tags)
        self.influx = influx
        self.journal = journal
        self.on_error = on_error
        self._lock = threading.Lock()
        self._recorded = 0
        self._closed = False
        self._closed_stats: SinkStats | None = None
        self._file = open(self.path, "ab")  # noqa: SIM115 - lives as long as the sink
        self._batch = int(writer_options.get("batch_lines", BATCH_LINES))
        self._writer: InfluxWriter | None = None
        if influx is not None:
            writer = InfluxWriter(influx, self.directory, on_error=self._error, **writer_options)
            probe = self._record([self._event_line("sink.open", title="sink opened")])
            try:
                writer.check(probe)
            except BaseException:
                self._file.close()
                raise
            self._writer = writer.start()
        if journal is not None:
            journal.event("sink.open", file=str(self.path), influxdb=self._where())

    def _where(self) -> str | None:
        return self.influx.describe() if self.influx else None

    # --- writing -------------------------------------------------------------------------

    def write(self, samples: list[Sample]) -> None:
        """Render and queue samples (called from the sampler thread; does not block)."""
        tags = self.tags
        lines = [
            line
            for line in (
                to_line(Sample(s.measurement, {**tags, **s.tags}, s.fields, s.time_ns))
                for s in samples
            )
            if line
        ]
        self.write_lines(lines)

    def write_lines(self, lines: list[str]) -> None:
        """Queue lines that are already line protocol (with their tags); no empty lines."""
        with self._lock:
            if self._closed:
                log.warning("sink closed: %d points not written", len(lines))
                return
            # encoded once, a batch at a time, for the file and the server alike
            for start in range(0, len(lines), self._batch):
                part = lines[start : start + self._batch]
                data = self._record(part)
                if self._writer is not None:
                    self._writer.submit(data, len(part))

    def _record(self, lines: list[str]) -> bytes:
        data = ("\n".join(lines) + "\n").encode()
        self._file.write(data)
        self._file.flush()  # a batch at a time: the file is complete up to the last batch
        self._recorded += len(lines)
        return data

    def annotate(self, action: str, /, *, title: str | None = None, **fields: FieldValue) -> None:
        """A ``chaos_event`` point for Grafana annotations, e.g.
        ``annotate("fault.apply", id=h.id, kind="netem", target="proxy")`` (the signature of
        :class:`chaos.faults.engine.guard.Annotate`).

        Tags: run, scenario, ``action``, and ``id``, ``kind`` (the fault kind), ``target`` and
        ``role`` when given. Fields: ``title`` (default: "action kind on target") and every
        other keyword (e.g. ``error``).
        """
        self.write_lines([self._event_line(action, title=title, **fields)])

    def _event_line(self, action: str, *, title: str | None = None, **fields: FieldValue) -> str:
        tags = {**self.tags, "action": action}
        tags.update({key: str(fields.pop(key)) for key in EVENT_TAGS if key in fields})
        if title is None:
            title = " ".join([action, tags.get("kind", "")]).strip()
            if "target" in tags:
                title += f" on {tags['target']}"
        return to_line(Sample(EVENT_MEASUREMENT, tags, {"title": title, **fields}, time.time_ns()))

    # --- the end -------------------------------------------------------------------------

    def _error(self, message: str) -> None:
        if self.journal is not None:
            self.journal.event("sink.error", message=message)
        if self.on_error is not None:
            self.on_error(message)

    def close(self, timeout: float = 10.0) -> SinkStats:
        """Deliver everything (waiting at most ``timeout`` s for InfluxDB), close the file,
        journal ``sink.stats``. Idempotent: later calls return the same counts."""
        with self._lock:  # later writes are refused; the writer is closed outside the lock
            if self._closed:
                return self._closed_stats or SinkStats(recorded=self._recorded)
            self._closed = True
            self._file.close()
        delivery = self._writer.close(timeout) if self._writer else DeliveryStats()
        stats = SinkStats(recorded=self._recorded, influxdb=self._where(), **asdict(delivery))
        self._closed_stats = stats
        if self.journal is not None:
            self.journal.event("sink.stats", **stats.as_dict())
        if stats.left_in_spool:
            self._error(
                f"{stats.left_in_spool} points were not delivered to InfluxDB; they are in "
                f"{self.directory / 'spool.lp'}: send them with `chaos push "
                f"{self.directory} --spool`"
            )
        return stats
