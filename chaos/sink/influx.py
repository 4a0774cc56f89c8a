"""Delivery of line protocol to InfluxDB: batching, retries, the spool and the error callback.

How the points reach the server, and why:

* influxdb-client's ``WriteApi`` in **synchronous** mode does the HTTP write, one call per
  batch of about 5,000 lines, from this module's own background thread. Each batch is handed
  over as one pre-joined ``bytes`` body: the sink encodes each batch of lines once, for
  ``samples.lp`` and for the server alike, and the writer only concatenates them.
  Why not the list of lines or WriteApi's batching mode, measured here against
  victoria-metrics on loopback (a shared, noisy 2-core machine):

  ==========================================================  ====================
  client                                                      points/s
  ==========================================================  ====================
  raw ``http.client`` POST, 5,000-line batches (one thread)   140k-230k (up to 450k
                                                              when the host is quiet)
  this sink (bench/sink.py, 1M points, 3 rounds)              165k-360k: 1.2-1.6x raw
  ``WriteApi`` synchronous, a *list* of 5,000 strings         0.6-0.7x raw (the client
                                                              encodes and type-checks
                                                              every line)
  ``WriteApi`` batching mode (reactivex), lists of lines      55k-60k
                                                              (notes/netem-kernel.md)
  ==========================================================  ====================

  The sink beats the single-threaded raw POST because encoding the next batch (and writing
  ``samples.lp``) overlaps with the server handling the previous one.
* Retries are this module's too: a batch that fails with a connection error, a timeout, 429,
  5xx, 401, 403 or 404 goes to the disk spool at once (nothing waits in memory), and the
  spool is retried with exponential backoff (0.5 s doubling to 10 s, or the server's
  Retry-After) until the server takes it. New points go behind the spooled ones while the
  spool is not empty, so the order is kept.
* A batch the server rejects as bad data (400, 413, other 4xx) cannot succeed by retrying: it
  is counted as dropped (it is still in ``samples.lp``) and reported.
* **Exactly once, or honest.** A batch whose request went out but whose answer never came (a
  read timeout, a connection reset after sending: a stalled or SIGSTOPped server) may already
  be stored. It is spooled and replayed like any other, marked as possibly stored, and its
  points are counted in ``possibly_duplicated`` when replayed. A replayed line is the same
  bytes, so the same series, fields and timestamp: InfluxDB overwrites an identical point,
  and victoria-metrics keeps one copy when started with ``-dedup.minScrapeInterval=1ms``
  (without it, it stores each copy: docs/metrics.md, the sink). A connection refused or a
  connect timeout never reached the server and is replayed without the mark.
* ``on_error(message)`` is called (from the writer thread) when the server goes away, comes
  back, or drops data; the sink journals it and the run prints it.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS

from chaos.errors import SinkError
from chaos.sink.config import InfluxConfig
from chaos.sink.spool import Spool

log = logging.getLogger(__name__)

BATCH_LINES = 5000
RETRYABLE_STATUS = {401, 403, 404, 408, 429}  # and every 5xx: the server or its config
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0


class DeliveryError(Exception):
    """One failed write: whether retrying can help, and what the server said."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        maybe_stored: bool = False,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.maybe_stored = maybe_stored  # the request went out; the answer never came


def _retry_after(exc: InfluxDBError) -> float | None:
    try:
        return float(exc.retry_after) if exc.retry_after else None
    except (TypeError, ValueError):
        return None


def _network_reason(exc: BaseException) -> str:
    """The OS error under urllib3's wrappers ("Connection refused"), else urllib3's text."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    return str(exc)


def _after_sending(exc: BaseException) -> bool:
    """Whether a failed write may have reached the server: anything but a failure to
    connect (refused, unreachable, connect timeout), where no byte of it was sent."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(
            seen,
            urllib3.exceptions.NewConnectionError
            | urllib3.exceptions.ConnectTimeoutError
            | ConnectionRefusedError,
        ):
            return False
        seen = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    return True


class Poster:
    """``WriteApi`` (synchronous) for one server; :meth:`post` raises :class:`DeliveryError`."""

    def __init__(self, config: InfluxConfig, *, timeout_s: float = 10.0) -> None:
        self.config = config
        # retries=False: a failure comes back at once and the caller decides (spool, backoff)
        self._client = InfluxDBClient(
            url=config.url,
            token=config.token,  # type: ignore[arg-type]  # None: no Authorization header
            org=config.org,
            timeout=int(timeout_s * 1000),
            retries=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def post(self, body: bytes) -> None:
        try:
            self._api.write(
                bucket=self.config.bucket,
                org=self.config.org,
                record=body,
                write_precision=WritePrecision.NS,
            )
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            text = f"HTTP {status}: {exc.message}" if status else str(exc.message)
            retryable = status is None or status in RETRYABLE_STATUS or status >= 500
            raise DeliveryError(text, retryable=retryable, retry_after=_retry_after(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DeliveryError(
                f"cannot reach the server: {_network_reason(exc)}",
                retryable=True,
                maybe_stored=_after_sending(exc),
            ) from exc

    def close(self) -> None:
        self._client.close()


def hint_for(message: str, config: InfluxConfig) -> str:
    """How to fix a failed first write, from what the server (or the network) said."""
    if "HTTP 401" in message or "HTTP 403" in message:
        return "check the token: INFLUXDB_V2_TOKEN, or the variable sink.influxdb.token_env names"
    if "HTTP 404" in message:
        return (
            f"check that org {config.org!r} and bucket {config.bucket!r} exist "
            "(--influx-org/--influx-bucket, INFLUXDB_V2_ORG/_BUCKET)"
        )
    return (
        f"is InfluxDB running at {config.url}? Start it, fix the URL (--influx-url, "
        "INFLUXDB_V2_URL), or run with --no-influx (samples stay in samples.lp; "
        "`chaos push RUN_DIR` sends them later)"
    )


@dataclass(frozen=True)
class Chunk:
    """Newline-terminated line protocol and how many lines it holds."""

    data: bytes
    count: int

    @staticmethod
    def join(chunks: Iterable[Chunk]) -> Chunk:
        chunks = list(chunks)
        if len(chunks) == 1:
            return chunks[0]
        return Chunk(b"".join(c.data for c in chunks), sum(c.count for c in chunks))


@dataclass
class DeliveryStats:
    """Points (lines) by fate. ``written`` includes ``replayed``; ``possibly_duplicated``
    are replayed points of batches that may have been stored before (a write that timed out
    after it was sent): the server holds them once if it de-duplicates identical points."""

    written: int = 0
    spooled: int = 0
    replayed: int = 0
    possibly_duplicated: int = 0
    dropped: int = 0
    left_in_spool: int = 0
    outages: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class InfluxWriter:
    """Background delivery of lines to one InfluxDB, with the disk spool in ``spool_dir``.

    :meth:`submit` never blocks on the network (it appends to a queue under a lock). The
    writer thread posts a batch when ``batch_lines`` are waiting or ``flush_interval`` has
    passed. More than ``max_pending`` lines waiting (a server slower than the input) go to the
    spool, so memory stays bounded without dropping anything.
    """

    def __init__(
        self,
        config: InfluxConfig,
        spool_dir: Path,
        *,
        on_error: Callable[[str], None] | None = None,
        batch_lines: int = BATCH_LINES,
        flush_interval: float = 1.0,
        max_pending: int = 1_000_000,
        timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.poster = Poster(config, timeout_s=timeout_s)
        self.spool = Spool(spool_dir)
        self.on_error = on_error
        self.batch_lines = batch_lines
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.stats = DeliveryStats()
        self._chunks: deque[Chunk] = deque()  # submitted, oldest first
        self._npending = 0
        self._first_pending_at = 0.0
        self._cond = threading.Condition()
        self._closing = False
        self._close_deadline = math.inf
        self._down_since: float | None = None
        self._backoff = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="chaos-sink", daemon=True)

    # --- the caller's side ---------------------------------------------------------------

    def check(self, body: bytes) -> None:
        """A synchronous first write: wrong URL, token, org or bucket fail here, clearly."""
        try:
            self.poster.post(body)
        except DeliveryError as exc:
            self.poster.close()
            self.spool.close()
            raise SinkError(
                f"cannot write to InfluxDB at {self.config.describe()}: {exc}",
                hint_for(str(exc), self.config),
            ) from None
        self.stats.written += body.count(b"\n")

    def start(self) -> InfluxWriter:
        self._thread.start()
        return self

    def submit(self, data: bytes, count: int) -> None:
        """Queue ``count`` newline-terminated lines of line protocol for delivery."""
        if not count:
            return
        with self._cond:
            if not self._npending:
                self._first_pending_at = time.monotonic()
            self._chunks.append(Chunk(data, count))
            self._npending += count
            if self._npending >= self.batch_lines:
                self._cond.notify()

    def close(self, timeout: float = 10.0) -> DeliveryStats:
        """Deliver what is waiting for at most ``timeout`` s (plus one write's timeout), then
        stop; what is not delivered stays in the spool and is counted in ``left_in_spool``."""
        with self._cond:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout + self.timeout_s + 1.0)
        if self._thread.is_alive():  # a post hangs beyond its own timeout: leave it be
            log.warning("InfluxDB writer still busy at close; its last batch may be re-sent")
        self._to_spool(self._take_all())
        self.stats.left_in_spool = self.spool.pending
        self.spool.close()
        self.poster.close()
        return self.stats

    # --- the writer thread ---------------------------------------------------------------

    def _take_all(self) -> Chunk:
        with self._cond:
            out = Chunk.join(self._chunks)
            self._chunks.clear()
            self._npending = 0
            return out

    def _take_batch(self) -> Chunk:
        """Chunks from the head of the queue up to about ``batch_lines`` lines (lock held).

        Chunks are not split: the sink hands over at most ``batch_lines`` lines at a time,
        so a batch stays under twice that."""
        taken: list[Chunk] = []
        count = 0
        while self._chunks and (not taken or count + self._chunks[0].count <= self.batch_lines):
            chunk = self._chunks.popleft()
            taken.append(chunk)
            count += chunk.count
        self._npending -= count
        if self._npending:
            self._first_pending_at = time.monotonic()
        return Chunk.join(taken)

    def _wait_for_work(self) -> str:
        """Block until there is something to do: 'send', 'spool', 'replay' or 'exit'."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closing and now >= self._close_deadline:
                    return "exit"  # close() spools what is still waiting
                if self._npending and (self.spool.pending or self._npending > self.max_pending):
                    return "spool"  # behind the spooled points, or too many in memory
                due = now - self._first_pending_at >= self.flush_interval
                if self._npending and (self._closing or self._npending >= self.batch_lines or due):
                    return "send"
                if self.spool.pending and now >= self._retry_at:
                    return "replay"
                if self._closing and not self._npending and not self.spool.pending:
                    return "exit"
                waits = [self.flush_interval]
                if self._npending:
                    waits.append(self._first_pending_at + self.flush_interval - now)
                if self.spool.pending:
                    waits.append(self._retry_at - now)
                if self._closing:
                    waits.append(self._close_deadline - now)
                self._cond.wait(max(min(waits), 0.005))

    def _loop(self) -> None:
        while True:
            action = self._wait_for_work()
            if action == "exit":
                return
            try:
                if action == "spool":
                    self._to_spool(self._take_all())
                elif action == "send":
                    with self._cond:
                        batch = self._take_batch()
                    self._send(batch)
                else:
                    self._replay()
            except Exception:  # a bug here must not stop delivery; points are in samples.lp
                log.exception("InfluxDB writer failed")
                time.sleep(0.1)

    def _to_spool(self, chunk: Chunk, maybe_stored: bool = False) -> None:
        self.spool.append(chunk.data, chunk.count, maybe_stored=maybe_stored)
        self.stats.spooled += chunk.count

    def _send(self, batch: Chunk) -> None:
        try:
            self.poster.post(batch.data)
        except DeliveryError as exc:
            if exc.retryable:
                self._to_spool(batch, maybe_stored=exc.maybe_stored)
                self._went_down(exc)
            else:
                self._dropped(batch.count, exc)
            return
        self.stats.written += batch.count

    def _replay(self) -> None:
        """Deliver the spool from its head until it is empty, a write fails (then back off)
        or new points arrive (they are spooled behind first, to keep the order)."""
        while self.spool.pending:
            body, count, end = self.spool.read_batch(self.batch_lines)
            try:
                self.poster.post(body)
            except DeliveryError as exc:
                if exc.retryable:
                    if exc.maybe_stored:
                        self.spool.mark_maybe_stored(end)
                    self._went_down(exc)
                    return
                self._dropped(count, exc)
            else:
                self.stats.written += count
                self.stats.replayed += count
                self.stats.possibly_duplicated += self.spool.maybe_stored_lines(body)
            self.spool.commit(end, count)
            self._came_back()
            with self._cond:
                if self._npending or (self._closing and time.monotonic() >= self._close_deadline):
                    return

    def _went_down(self, exc: DeliveryError) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self.stats.outages += 1
            self._report(
                f"InfluxDB at {self.config.url} failed ({exc}); spooling points to "
                f"{self.spool.path} and retrying"
            )
        else:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        delay = exc.retry_after if exc.retry_after is not None else self._backoff
        self._retry_at = now + delay * random.uniform(0.9, 1.1)

    def _came_back(self) -> None:
        if self._down_since is not None and self.spool.pending == 0:
            down = time.monotonic() - self._down_since
            self._down_since = None
            self._backoff = BACKOFF_MIN_S
            self._report(
                f"InfluxDB at {self.config.url} is back after {down:.1f} s; "
                f"{self.stats.replayed} points replayed from the spool so far"
            )

    def _dropped(self, count: int, exc: DeliveryError) -> None:
        self.stats.dropped += count
        self._report(
            f"InfluxDB rejected {count} points ({exc}); they stay in samples.lp but are "
            "not in InfluxDB"
        )

    def _report(self, message: str) -> None:
        log.warning("%s", message)
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:
                log.exception("sink error callback failed")
