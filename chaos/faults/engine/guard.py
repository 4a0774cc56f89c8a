"""Apply faults so that every one of them is reverted, whatever happens to the controller.

:class:`FaultGuard` applies a fault as validate → prepare → **ledger write (fsync'd)** →
apply → journal ``fault.apply``, and keeps a last-in-first-out stack of what is applied.
Leaving its ``with`` block — normally, by an exception, Ctrl-C, or SIGTERM, SIGHUP or
SIGQUIT (turned into an exception when nobody else handles them, see :mod:`chaos.endings`)
— reverts the stack in LIFO order, journals ``fault.revert`` for each, and removes each
ledger entry *after* its revert succeeded. A revert that fails is loud:
``fault.revert.failed`` in the journal, the ledger entry kept (so ``chaos revert-all`` can
retry), and a :class:`FaultError` once every other revert was tried. After a SIGKILL, nothing
in this process runs; the ledger is what ``revert-all`` reads.

While reverting in the main thread, Ctrl-C and the stop signals are held back and
re-delivered after the reverts, so an impatient second Ctrl-C cannot leave half the faults
applied.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from chaos.endings import handled, held_signals, signals_raise
from chaos.errors import ChaosError, FaultError
from chaos.faults.base import Fault, Handle
from chaos.faults.engine.ledger import Entry, Ledger
from chaos.faults.registry import fault_type


class Annotate(Protocol):
    """The sink's hook (``Sink.annotate``): one call per apply and revert."""

    def __call__(self, action: str, /, **fields: Any) -> None: ...


class EventLog(Protocol):
    def event(self, name: str, /, **fields: Any) -> Any: ...


def revert_recorded(ledger: Ledger, handle: Handle) -> bool:
    """Revert a fault recorded in ``ledger`` and remove its entry, under the ledger's lock
    (a stacking fault sees the others that still hold what it changed).

    False, and nothing touched, when its entry is gone: someone else reverted it (`chaos
    revert-all --force`), and what it had changed may belong to another fault by now."""
    with ledger.lock():
        if not ledger.path(handle.id).exists():
            return False
        revert_handle(handle, ledger.holders(handle))
        ledger.remove(handle.id)
        return True


@dataclass(frozen=True)
class Leftover:
    """What :func:`revert_leftovers` did with one ledger entry: ``reverted``, ``gone``
    (someone else reverted it meanwhile), ``left`` (its owner still runs) or ``failed``
    (``error`` says why; the entry is kept)."""

    entry: Entry
    outcome: str
    error: str | None = None

    @property
    def label(self) -> str:
        handle = self.entry.handle
        return f"{handle.id} {handle.kind} on {handle.target}"


def revert_leftovers(ledger: Ledger, force: bool = False) -> Iterator[Leftover]:
    """Revert what the ledger holds, newest first (the reverse of the order of the applies),
    one outcome at a time: every entry whose owner is gone (a crashed run or agent), or
    every entry with ``force`` (``chaos revert-all --force``)."""
    for entry in ledger.entries()[0]:
        if entry.owner_alive() and not force:
            yield Leftover(entry, "left")
            continue
        try:
            done = revert_recorded(ledger, entry.handle)
        except ChaosError as exc:
            yield Leftover(entry, "failed", exc.message)
            continue
        yield Leftover(entry, "reverted" if done else "gone")


def revert_handle(handle: Handle, holders: list[Handle] | None = None) -> None:
    """Revert one handle by its kind; any failure becomes a FaultError naming the fault.
    ``holders``: the other recorded faults of its kind (stacking faults leave theirs)."""
    cls = fault_type(handle.kind)
    try:
        if cls.stacks:
            cls.revert_stacked(handle, holders or [])
        else:
            cls.revert(handle)
    except ChaosError:
        raise
    except Exception as exc:  # a bug or an unexpected kernel answer: still a failed revert
        raise FaultError(
            f"revert of fault {handle.id} ({handle.kind} on {handle.target}) failed: "
            f"{type(exc).__name__}: {exc}",
            "run `chaos revert-all` to retry; `chaos faults list` shows what is left",
        ) from exc


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer Ctrl-C and the stop signals while reverting (main thread only), then
    re-deliver them."""
    with held_signals() as pending:
        yield
    for signum in dict.fromkeys(pending):
        signal.raise_signal(signum)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGQUIT raise (as in ``chaos run``) unless someone already
    handles them."""
    if handled():
        yield
        return
    with signals_raise():
        yield


class FaultGuard:
    """Applies faults and guarantees their revert; use as a context manager."""

    def __init__(
        self,
        journal: EventLog | None = None,
        ledger: Ledger | None = None,
        annotate: Annotate | None = None,
    ) -> None:
        self.journal = journal
        self.ledger = ledger if ledger is not None else Ledger()
        self.annotate = annotate
        self._active: list[Handle] = []
        self._lock = threading.RLock()
        self._sigterm: contextlib.ExitStack | None = None

    # --- context manager ------------------------------------------------------------------
    def __enter__(self) -> FaultGuard:
        self._sigterm = contextlib.ExitStack()
        self._sigterm.enter_context(_stop_signals_raise())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.revert_all()
        finally:
            if self._sigterm is not None:
                self._sigterm.close()

    # --- apply and revert -----------------------------------------------------------------
    @property
    def active(self) -> list[Handle]:
        with self._lock:
            return list(self._active)

    def apply(self, fault: Fault, **info: Any) -> Handle:
        """prepare → ledger → apply → journal; a failed apply is reverted before raising.

        All under the ledger's lock: overlapping faults of other processes see this one."""
        with self.ledger.lock():
            return self._apply(fault, info)

    def _apply(self, fault: Fault, info: dict[str, Any]) -> Handle:
        handle = fault.prepare()
        if type(fault).stacks:
            fault.stack_on(handle, self.ledger.holders(handle))
        reversible = type(fault).reversible
        fields = {"id": handle.id, "kind": handle.kind, "target": handle.target, **info}
        if reversible:
            self.ledger.write(handle, **info)
            with self._lock:
                self._active.append(handle)  # before apply: a half-applied fault is ours too
        started = time.monotonic()
        try:
            fault.apply(handle)
        except BaseException as exc:
            self._event("fault.apply.failed", error=str(exc), **fields)
            if reversible:
                self.revert(handle)
            if isinstance(exc, Exception) and not isinstance(exc, ChaosError):
                raise FaultError(
                    f"applying fault {handle.kind} on {handle.target} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise
        latency = round((time.monotonic() - started) * 1000, 3)
        self._event(
            "fault.apply",
            apply_ms=latency,
            reversible=reversible,
            params=fault.params.model_dump(),
            **fields,
        )
        self._annotate("apply", reversible=reversible, **fields)  # a kill is an instant
        return handle

    def revert(self, handle: Handle) -> None:
        """Revert one applied fault; on failure its ledger entry stays and FaultError raises."""
        fields: dict[str, Any] = {"id": handle.id, "kind": handle.kind, "target": handle.target}
        started = time.monotonic()
        try:
            with signals_held():
                if not revert_recorded(self.ledger, handle):
                    fields["elsewhere"] = True  # its window ended before its time
        except FaultError as exc:
            self._event("fault.revert.failed", error=exc.message, **fields)
            self._annotate("revert-failed", error=exc.message, **fields)
            raise
        with self._lock:
            if handle in self._active:
                self._active.remove(handle)
        latency = round((time.monotonic() - started) * 1000, 3)
        self._event("fault.revert", revert_ms=latency, **fields)
        self._annotate("revert", **fields)

    def revert_all(self) -> None:
        """Revert everything still applied, newest first; try all, then raise if any failed."""
        failed: list[Handle] = []
        errors: list[str] = []
        with signals_held():
            while True:
                with self._lock:
                    remaining = [h for h in reversed(self._active) if h not in failed]
                if not remaining:
                    break
                try:
                    self.revert(remaining[0])
                except FaultError as exc:
                    failed.append(remaining[0])
                    errors.append(exc.message)
        if errors:
            raise FaultError(
                f"{len(errors)} fault(s) could not be reverted: " + "; ".join(errors),
                "their ledger entries are kept: run `chaos revert-all` (as root) to retry",
            )

    # --- journal and sink ------------------------------------------------------------------
    def _event(self, name: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.event(name, **fields)

    def _annotate(self, action: str, **fields: Any) -> None:
        if self.annotate is None:
            return
        try:
            self.annotate(action, **fields)
        except Exception as exc:  # the sink must never stop a revert
            self._event("fault.annotate.failed", action=action, error=str(exc))
