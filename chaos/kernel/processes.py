"""Processes the lab starts inside its namespaces: start, wait until ready, stop.

A process is identified by pid *and* its start time (``/proc/PID/stat`` field 22), so a
recorded pid that the kernel has since reused for another program is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import re2

from chaos.errors import ProcessStartError
from chaos.kernel import netns
from chaos.record import logcap

PR_SET_PDEATHSIG = 1


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # The command name may contain spaces; fields after the closing paren are fixed.
            return int(fh.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def state_of(pid: int) -> str | None:
    """One-letter process state (R, S, T, Z, ...), or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class ProcessRecord:
    """What the lab state file keeps about a process it started."""

    role: str
    name: str
    pid: int
    started: int | None
    namespace: str | None
    log: str
    argv: list[str]
    #: (pid, start time) of the writer of a capped log (see spawn's log_cap); it ends by
    #: itself once the process has exited and it has written the last lines
    log_writer: tuple[int, int | None] | None = None

    def alive(self) -> bool:
        return start_time(self.pid) == self.started and state_of(self.pid) not in (None, "Z")

    def wait_log_written(self, timeout: float = 3.0) -> None:
        """After the process exited: until its log writer has written the last lines (it is
        killed after ``timeout``, should something else still hold the pipe)."""
        if self.log_writer is None:
            return
        pid, started = self.log_writer
        deadline = time.monotonic() + timeout
        while start_time(pid) == started and state_of(pid) not in (None, "Z"):
            _reap(pid)
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        _reap(pid)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open."""
    out: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def listening(pid: int, inodes: set[int] | None = None) -> set[str]:
    """Local ``ADDRESS:PORT`` of the TCP sockets listening in the network namespace of
    ``pid``; only sockets among ``inodes`` when given. Asked of sock_diag for LISTEN sockets
    only: the cost does not grow with the namespace's connections."""
    from chaos.kernel import sockdiag as sd
    from chaos.kernel.nsref import NetnsRef

    ref = NetnsRef.of_pid(pid)
    try:
        diag = sd.InetDiag.open_in(ref)
        try:
            records = list(diag.dump_records(sd.AF_ANY, sd.states_mask([sd.LISTEN])))
        finally:
            diag.close()
    finally:
        ref.close()
    out: set[str] = set()
    for record in records:
        if inodes is not None and sd.U32.unpack_from(record, sd.OFF_INODE)[0] not in inodes:
            continue
        address = sd.addr_text(record[16], record[sd.OFF_SRC : sd.OFF_SRC + 16])
        port = int.from_bytes(record[sd.OFF_SPORT : sd.OFF_SPORT + 2], "big")
        out.add(f"{address}:{port}")
    return out


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def raise_fd_limit() -> None:
    """Lift RLIMIT_NOFILE to the kernel's maximum: proxies size their fd needs from maxconn."""
    try:
        with open("/proc/sys/fs/nr_open") as fh:
            ceiling = int(fh.read())
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
    except (OSError, ValueError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child before exec: the kernel sends ``sig`` when the parent *thread* exits.

    SIGKILL, because a child the controller left SIGSTOPped would never act on SIGTERM. Start
    children from a thread that lives as long as they should (the main thread). The
    ``PR_SET_PDEATHSIG`` setting survives exec (except of set-user-ID programs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl: nobody will send it
        os._exit(1)


def spawn(
    role: str,
    name: str,
    namespace: str | None,
    argv: Sequence[str],
    log_path: Path,
    detach: bool = True,
    tied: bool = False,
    env: dict[str, str] | None = None,
    log_cap: int | None = None,
) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start ``argv`` in ``namespace`` with stdout and stderr going to ``log_path``.

    ``detach`` puts it in its own session, so a terminal's signals reach only the controller
    and a lab outlives the `chaos lab up` command. ``tied`` makes it die with this process
    (``chaos run``: even a SIGKILL of the controller leaves no lab process running).
    ``env`` replaces the environment (None: inherit). ``log_cap``: a per-connection log (the
    proxy's) goes through a pipe into a capped log (:mod:`chaos.record.logcap`) that never
    uses more than that many bytes.
    """

    def prepare() -> None:
        raise_fd_limit()
        if tied:
            die_with_parent()

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with _log_sink(log_path, log_cap, detach) as (log, writer):
        try:
            proc = netns.popen(
                namespace,
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                prepare=prepare,
                start_new_session=detach,
                close_fds=True,
                env=env,
            )
        except FileNotFoundError:
            raise ProcessStartError(
                f"cannot start {name}: {argv[0]} is not installed",
                f"install it (Debian: apt-get install {Path(argv[0]).name})",
            ) from None
    record = ProcessRecord(
        role,
        name,
        proc.pid,
        start_time(proc.pid),
        namespace,
        str(log_path),
        list(argv),
        log_writer=(writer.pid, start_time(writer.pid)) if writer is not None else None,
    )
    return proc, record


@contextlib.contextmanager
def _log_sink(
    log_path: Path, log_cap: int | None, detach: bool
) -> Iterator[tuple[int, subprocess.Popen | None]]:
    """The fd a process's output goes to: the log file, or a pipe into a capped log's
    writer (which ends at end of file, when every holder of the pipe has exited)."""
    if log_cap is None:
        with open(log_path, "ab") as log:
            yield log.fileno(), None
        return
    logcap.remove_parts(log_path)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        writer = subprocess.Popen(
            logcap.command(log_path, log_cap),
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # outlives `chaos lab up`: must not hold its output
            start_new_session=detach,
            close_fds=True,
        )
        os.close(read_end)
        read_end = -1
        yield write_end, writer
    finally:
        if read_end >= 0:
            os.close(read_end)
        os.close(write_end)


def _is_listening(host: str, port: int) -> bool:
    """A LISTEN socket on host:port (or the wildcard) in this thread's namespace.

    Looking, rather than connecting, keeps readiness checks out of the proxy's log.
    """
    wanted = {f"{_hex_ip(host)}:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/thread-self/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split(None, 4)
            if fields[3] == "0A" and fields[1] in wanted:
                return True
    return False


def _hex_ip(host: str) -> str:
    return socket.inet_aton(host)[::-1].hex().upper()


def wait_listening(
    proc: subprocess.Popen,
    record: ProcessRecord,
    host: str,
    port: int,
    timeout: float = 10.0,
    namespace: str | None = None,
) -> None:
    """Wait until ``host:port`` is listening in ``namespace`` (default: the process's).

    A process that exits first, or never listens, raises ProcessStartError with the tail of
    its own log, which is where haproxy and nginx explain what is wrong.
    """
    deadline = time.monotonic() + timeout
    namespace = namespace if namespace is not None else record.namespace
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            record.wait_log_written()
            raise ProcessStartError(
                f"{record.name} exited with status {code} while starting; its output:\n"
                + (log_tail(record.log) or "(no output)"),
                f"full log: {record.log}",
            )
        if netns.run_in(namespace, _is_listening, host, port):
            return
        time.sleep(0.05)
    terminate(record)
    raise ProcessStartError(
        f"{record.name} did not accept connections on {host}:{port} within {timeout:.0f}s; "
        "its output:\n" + (log_tail(record.log) or "(no output)"),
        f"full log: {record.log}",
    )


def terminate(record: ProcessRecord, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; harmless when already gone. Returns
    once the process's log holds its last lines."""
    try:
        _stop(record, grace)
    finally:
        record.wait_log_written()


def _stop(record: ProcessRecord, grace: float) -> None:
    if not record.alive():
        _reap(record.pid)
        return
    for sig, wait in ((signal.SIGCONT, 0.0), (signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(record.pid, sig)  # SIGCONT first: a stopped process cannot act on SIGTERM
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not record.alive():
                return
            time.sleep(0.02)
    _reap(record.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" when gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class CommandPattern:
    """A regular expression over command lines that cannot backtrack catastrophically.

    RE2 (``google-re2``) matches in time linear in the input, whatever the pattern, so a
    pattern from a scenario or an agent's client (``origin:((/|\\.|[a-z])+)+\\x01``) costs
    microseconds, not minutes. RE2 has no backreferences or lookaround: such a pattern is
    refused with :class:`ValueError`."""

    MAX_LENGTH = 256

    def __init__(self, text: str) -> None:
        if len(text) > self.MAX_LENGTH:
            raise ValueError(f"longer than {self.MAX_LENGTH} characters")
        options = re2.Options()
        options.log_errors = False  # the error comes back as an exception, not on stderr
        options.max_mem = 1 << 20
        try:
            self._compiled = re2.compile(text, options)
        except re2.error as exc:
            raise ValueError(_re2_message(exc)) from None
        self.text = text

    def search(self, line: str) -> bool:
        return self._compiled.search(line) is not None


def _re2_message(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else str(exc)
    return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)


@dataclass(frozen=True)
class Owner:
    """The process that made something (a ledger entry, a lab): pid, start time and host.

    Alive means: on this host, the pid still runs the same program (start time matches). An
    owner on another host (a ledger directory shared between hosts) cannot be checked here
    and counts as alive, so nothing of it is touched without ``--force``."""

    pid: int
    started: int | None
    host: str

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), start_time(os.getpid()), socket.gethostname())

    def here(self) -> bool:
        return self.host in ("", socket.gethostname())

    def alive(self) -> bool:
        if not self.here():
            return True
        return start_time(self.pid) == self.started and state_of(self.pid) not in (None, "Z")

    def describe(self) -> str:
        """``pid 123 (chaos run smoke ...)``, for messages about whose something is."""
        command = cmdline(self.pid) if self.here() and self.alive() else ""
        # paths as their last part: `python fault_controller.py ...`, `chaos run smoke`
        command = " ".join(word.rpartition("/")[2] or word for word in command.split())
        where = "" if self.here() else f" on {self.host}"
        shown = f" ({command[:80]})" if command else ""
        return f"pid {self.pid}{shown}{where}"
