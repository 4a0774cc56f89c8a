"""TIME_WAIT timers: how many TIME_WAIT sockets had their timer pushed back.

A TIME_WAIT socket normally dies ``TCP_TIMEWAIT_LEN`` (60 s) after it was made. An
out-of-window segment with ACK set restarts that timer (``inet_twsk_reschedule`` in
``tcp_timewait_state_process``): the socket that answers a late FIN of seed 000's ACK loop
lives on for as long as the loop lasts. ``ss -tano`` shows it as ``timer:(timewait,59sec,0)``
long after the connection closed.

One sock_diag dump of the namespace's TIME_WAIT sockets per sample; each socket's remaining
time (``idiag_expires``) is kept by 4-tuple, and a socket whose remaining time is more than
:data:`SLACK_MS` above what the previous sample's left it (minus the time between the two)
was rescheduled. Opt-in per role (``collectors.time_wait_timers``): it dumps every TIME_WAIT
socket, which a storm of them makes costly.
"""

from __future__ import annotations

import struct
import time

from chaos.kernel import sockdiag as sd
from chaos.kernel.nsref import NetnsRef
from chaos.record import schema
from chaos.record.point import Sample, time_ns_of

MEASUREMENT = schema.TIME_WAIT_TIMERS
#: the timer wheel's granularity and the sampling jitter stay below this
SLACK_MS = 1000

_FORMATS: dict[int, struct.Struct] = {}


def _record(size: int) -> struct.Struct:
    """(sport+dport+src+dst, expires ms) of one inet_diag record of ``size`` bytes."""
    fmt = _FORMATS.get(size)
    if fmt is None:
        fmt = _FORMATS[size] = struct.Struct(f"=20x36s12xI{size - 72}x")
    return fmt


def rescheduled(
    before: dict[bytes, int], after: dict[bytes, int], elapsed_ms: float, slack_ms: int = SLACK_MS
) -> int:
    """Sockets in both samples whose remaining time went up by more than the slack.

    >>> rescheduled({b"a": 50_000, b"b": 50_000}, {b"a": 59_000, b"b": 49_000}, 1000)
    1
    """
    return sum(
        1
        for key, left in after.items()
        if key in before and left > before[key] - elapsed_ms + slack_ms
    )


class TimeWaitTimers:
    """``time_wait_timers`` for one namespace: ``sockets``, ``rescheduled`` (since the
    previous sample) and ``max_remaining_s``."""

    name = "time_wait_timers"
    period = 0.0

    def __init__(self, ns: NetnsRef, *, tags: dict[str, str] | None = None) -> None:
        self.netns = ns.label
        self.tags = {"netns": ns.label, **(tags or {})}
        self.diag = sd.InetDiag.open_in(ns)
        self._last: tuple[float, dict[bytes, int]] | None = None

    def timers(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for run in self.diag.dump(sd.AF_ANY, sd.states_mask([sd.TIME_WAIT])):
            for key, expires in _record(run.size).iter_unpack(run.view):
                out[key] = expires
        return out

    def sample(self, now: float) -> list[Sample]:
        # the dump's own clock, not the tick's: a loaded sampler runs its collectors
        # seconds late, and a timer compared across a wrong interval looks pushed back
        before_dump = time.monotonic()
        current = self.timers()
        taken = (before_dump + time.monotonic()) / 2
        fields: dict[str, float | int] = {
            "sockets": len(current),
            "max_remaining_s": round(max(current.values(), default=0) / 1000, 3),
        }
        if self._last is not None:
            then, before = self._last
            fields["rescheduled"] = rescheduled(before, current, (taken - then) * 1000)
        self._last = (taken, current)
        return [Sample(MEASUREMENT, self.tags, fields, time_ns_of(now))]

    def close(self) -> None:
        self.diag.close()
