"""``chaos push RUN_DIR``: backfill a finished run's points into InfluxDB.

The whole ``samples.lp`` is sent in 5,000-line batches. InfluxDB keeps one value per series
and timestamp, so pushing a run twice overwrites rather than duplicates. ``--spool`` sends only
``spool.lp``, the points a run could not deliver before it ended; that is resumable (the
spool's offset advances batch by batch).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chaos.errors import SinkError
from chaos.record.rundir import RunFiles
from chaos.scenario.model import InfluxSpec
from chaos.sink.config import InfluxConfig, InfluxFlags, resolve_influx
from chaos.sink.influx import BATCH_LINES, DeliveryError, Poster, hint_for
from chaos.sink.sink import SAMPLES_FILE
from chaos.sink.spool import SPOOL_FILE, Spool

RETRIES = 3  # per batch, for transient failures (0.5, 1, 2 s apart)


@dataclass(frozen=True)
class PushResult:
    source: Path
    points: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0

    def describe(self, destination: str) -> str:
        """What ``chaos push`` says when it is done."""
        return (
            f"pushed {self.points} points from {self.source} to {destination} "
            f"in {self.seconds:.1f} s ({self.rate:,.0f} points/s)"
        )


def run_influx_spec(run_dir: Path) -> InfluxSpec | None:
    """The run's own ``sink.influxdb`` (from its scenario.yaml), if it had one."""
    try:
        data: Any = yaml.safe_load(RunFiles(run_dir).scenario.read_text())
        section = data["sink"]["influxdb"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    try:
        return InfluxSpec.model_validate(section) if section else None
    except ValueError:
        return None


def resolve_for_run(run_dir: Path, flags: InfluxFlags) -> InfluxConfig:
    config = resolve_influx(run_influx_spec(run_dir), flags)
    if config is None:
        raise SinkError(
            "no InfluxDB to push to",
            "pass --url, --org and --bucket (and --token), or export INFLUXDB_V2_URL/ORG/"
            "BUCKET/TOKEN",
        )
    return config


def source_of(run_dir: Path, spool_only: bool = False) -> Path:
    """The file to push; :class:`SinkError` when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SinkError(f"{run_dir} is not a directory", "give a run directory, e.g. runs/<...>")
    source = run_dir / (SPOOL_FILE if spool_only else SAMPLES_FILE)
    if not source.is_file():
        what = "nothing left in a spool" if spool_only else "no samples.lp: not a run directory?"
        raise SinkError(f"{source} does not exist ({what})", "check the path with `ls runs/`")
    return source


def _batches(path: Path, size: int) -> Iterator[tuple[bytes, int]]:
    with open(path, "rb") as fh:
        lines = (line if line.endswith(b"\n") else line + b"\n" for line in fh if line.strip())
        while batch := list(itertools.islice(lines, size)):
            yield b"".join(batch), len(batch)


def _post_with_retries(poster: Poster, body: bytes, done: int, total: int) -> None:
    for attempt in range(RETRIES + 1):
        try:
            poster.post(body)
            return
        except DeliveryError as exc:
            if not exc.retryable or attempt == RETRIES:
                raise SinkError(
                    f"push stopped after {done} of {total} points: InfluxDB at "
                    f"{poster.config.describe()}: {exc}",
                    hint_for(str(exc), poster.config),
                ) from None
            time.sleep(exc.retry_after or 0.5 * 2**attempt)


def push(
    run_dir: Path,
    config: InfluxConfig,
    *,
    spool_only: bool = False,
    batch_lines: int = BATCH_LINES,
    progress: Callable[[int, int], None] | None = None,
) -> PushResult:
    """Send the run's points; ``progress(done, total)`` after every batch."""
    source = source_of(run_dir, spool_only)
    poster = Poster(config)
    started = time.perf_counter()
    done = 0
    try:
        if spool_only:
            spool = Spool(source.parent)
            total = spool.pending
            try:
                while spool.pending:
                    body, count, end = spool.read_batch(batch_lines)
                    _post_with_retries(poster, body, done, total)
                    spool.commit(end, count)
                    done += count
                    if progress:
                        progress(done, total)
            finally:
                spool.close()
        else:
            with open(source, "rb") as fh:
                total = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
            for body, count in _batches(source, batch_lines):
                _post_with_retries(poster, body, done, total)
                done += count
                if progress:
                    progress(done, total)
    finally:
        poster.close()
    return PushResult(source=source, points=done, seconds=time.perf_counter() - started)
