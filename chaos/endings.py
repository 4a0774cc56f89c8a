"""How a controller ends when it is asked to: every signal that means "stop" takes one path.

SIGTERM (a service manager, ``kill``), SIGHUP (the terminal or ssh session closed) and
SIGQUIT (Ctrl-\\) raise :class:`Terminated` in the main thread, so ``finally`` blocks revert
faults and remove the lab exactly as for Ctrl-C (SIGINT, Python's KeyboardInterrupt). The
process then exits with 128 + the signal's number, the shell's convention (SIGTERM → 143,
SIGHUP → 129, SIGINT → 130), so a caller can tell how it ended.

Children the controller starts die with it where the kernel allows:
:func:`chaos.kernel.processes.die_with_parent` (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the signals that end a controller the way SIGTERM does
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Terminated(BaseException):
    """A stop signal, raised in the main thread so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(exc: BaseException) -> int:
    """128 + signal for an ending by signal (Ctrl-C is SIGINT: 130)."""
    if isinstance(exc, Terminated):
        return exc.exit_code
    return 128 + signal.SIGINT


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM, SIGHUP and SIGQUIT raise :class:`Terminated` (main thread
    only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        # pyroute2 forks helper children (no exec) and stops them with SIGTERM; they inherit
        # this handler and must just exit, not run the controller's cleanup a second time.
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def handled() -> bool:
    """True when someone already handles SIGTERM (an outer :func:`signals_raise`)."""
    return signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def ending_for(signum: int) -> BaseException:
    """The exception a stop signal or Ctrl-C raises."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@contextmanager
def held_signals() -> Iterator[list[int]]:
    """Within the block (main thread), stop signals and Ctrl-C are recorded in the yielded
    list instead of acted on: cleanup must finish. The caller decides what they mean."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, *ENDING_SIGNALS)}
    try:
        yield pending
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
