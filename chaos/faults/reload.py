"""The proxy's own lifecycle as faults: ``reload`` (the proxy's graceful reload) and
``restart`` (stop, then start the same command again). Both are one-shot and irreversible,
like ``kill``; repeat them with ``every``.

``reload`` does what an operator's reload does, by the proxy's kind (told from the target
process's name):

    haproxy   SIGUSR2 to the master (the lab runs HAProxy in master-worker mode, -W): a new
              worker starts, the old one finishes its connections and exits
    nginx     SIGHUP to the master: new workers start, old ones drain ("shutting down")
    caddy     `caddy reload` with the running configuration, through its admin endpoint
              in the proxy's namespace: one process, connections handed over inside it

``restart`` sends SIGTERM to the proxy's main process, waits until it is gone, and starts the
same command line with the same environment, working directory and output, in the same
namespace; the lab's record of the proxy follows the new process. Connections that arrive in
between are refused.

What a reload did is measured by the ``proxy_generations`` collector
(:mod:`chaos.collect.generations`): old workers still draining, for how long, and their
sockets by state.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from chaos.errors import FaultError
from chaos.faults.base import Fault, Handle, HandleData, Params
from chaos.kernel import netns
from chaos.kernel.processes import (
    ProcessRecord,
    listening,
    socket_inodes,
    start_time,
    state_of,
)
from chaos.kernel.proctree import children

if TYPE_CHECKING:
    from chaos.lab.topology import LabState

RELOAD_SIGNALS = {"haproxy": signal.SIGUSR2, "nginx": signal.SIGHUP}
KINDS = ("haproxy", "nginx", "caddy")


class LifecycleParams(Params):
    settle: float = Field(
        default=5.0, gt=0, le=60, description="seconds to wait for the proxy to come back"
    )


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _argv(pid: int) -> list[str]:
    """The command line ``pid`` was started with. nginx overwrites its own with a title
    ("nginx: master process /usr/sbin/nginx -c ..."): the command follows the title."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    argv = [part.decode() for part in raw.split(b"\0") if part]
    if argv and argv[0].startswith("nginx: master process "):
        argv = " ".join(argv).removeprefix("nginx: master process ").split()
    return argv


class LifecycleHandle(HandleData):
    """The proxy's main process (pid and start time, so a reused pid is never signalled),
    its program, and the workers it had before."""

    pid: int
    started: int | None
    proxy: str
    workers: list[int]
    settle: float


class _ProxyLifecycle(Fault):
    handle_model = LifecycleHandle
    params: LifecycleParams
    reversible = False

    def check_target(self) -> None:
        main = self._main()
        kind = comm(main)
        if kind not in KINDS:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: process {main} is {kind or 'gone'}, "
                f"not a proxy ({', '.join(KINDS)})",
                "aim it at the lab's proxy (target: proxy)",
            )

    def _main(self) -> int:
        live = [p for p in self.target.pids if state_of(p) not in (None, "Z")]
        if not live and self.target.netns is not None:
            # restarted since the target was resolved: the lab's record has the new process
            live = [p for p in [_lab_proxy_in(self.target.netns)] if p is not None]
        if len(live) != 1:
            raise FaultError(
                f"fault {self.kind} on {self.target.name}: needs the proxy's one main process, "
                f"found {len(live)}",
                "aim it at the lab's proxy (target: proxy) while the lab is up",
            )
        return live[0]

    def prepare(self) -> Handle:
        main = self._main()
        return self.handle(
            LifecycleHandle(
                pid=main,
                started=start_time(main),
                proxy=comm(main),
                workers=sorted(children(main)),
                settle=self.params.settle,
            )
        )

    @classmethod
    def revert(cls, handle: Handle) -> None:
        """A reload or restart has no undo; nothing to do, harmlessly."""


class Reload(_ProxyLifecycle):
    kind = "reload"
    params_model = LifecycleParams

    def apply(self, handle: Handle) -> None:
        state = LifecycleHandle.of(handle)
        pid, kind = state.pid, state.proxy
        if start_time(pid) != state.started:
            raise FaultError(f"the proxy (pid {pid}) is gone: nothing to reload")
        if kind == "caddy":
            self._caddy_reload(pid, state.settle)
            return
        os.kill(pid, RELOAD_SIGNALS[kind])
        # reloaded once a worker that was not there before runs
        old = set(state.workers)
        deadline = time.monotonic() + state.settle
        while not (set(children(pid)) - old):
            if time.monotonic() > deadline:
                raise FaultError(
                    f"{kind} (pid {pid}) started no new worker within {state.settle:g}s of "
                    "its reload signal",
                    "see the proxy's log; for haproxy the lab's master-worker mode (-W) is "
                    "needed",
                )
            time.sleep(0.01)

    def _caddy_reload(self, pid: int, settle: float) -> None:
        argv = _argv(pid)
        reload = [argv[0], "reload", *argv[2:]]  # `caddy run --config X --adapter Y`
        env = _environ(pid)
        proc = netns.popen(
            self.target.netns, reload, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=os.readlink(f"/proc/{pid}/cwd"),
        )  # fmt: skip
        try:
            said = proc.communicate(timeout=settle)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise FaultError(f"caddy reload did not finish within {settle:g}s") from None
        if proc.returncode != 0:
            raise FaultError(f"caddy reload failed: {said.strip()[-400:]}")


class Restart(_ProxyLifecycle):
    kind = "restart"
    params_model = LifecycleParams

    def apply(self, handle: Handle) -> None:
        data = LifecycleHandle.of(handle)
        pid = data.pid
        if start_time(pid) != data.started:
            raise FaultError(f"the proxy (pid {pid}) is gone: nothing to restart")
        # the lab's record has the exact command; /proc's may be a rewritten title (nginx)
        lab = _lab_of(self.target.netns)
        record = next((r for r in lab.processes if r.pid == pid), None) if lab else None
        argv = record.argv if record is not None else _fresh_argv(_argv(pid))
        env = _environ(pid)
        tree = [pid, *children(pid)]
        listeners = listening(pid, set().union(*(socket_inodes(p) for p in tree)))
        cwd = os.readlink(f"/proc/{pid}/cwd")
        log = os.readlink(f"/proc/{pid}/fd/1")
        if not log.startswith("/"):  # a pipe or socket cannot be reopened
            log = os.devnull
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + data.settle
        while start_time(pid) == data.started and state_of(pid) not in (None, "Z"):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        with open(log, "ab") as out:
            proc = netns.popen(
                self.target.netns, argv, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
                close_fds=True,
            )  # fmt: skip
        _follow_in_lab_state(self.target.netns, pid, data.started, proc.pid)
        # back once it listens where the old one did
        deadline = time.monotonic() + data.settle
        while not listeners <= listening(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FaultError(
                    f"the restarted {data.proxy} (pid {proc.pid}) "
                    + ("exited" if proc.poll() is not None else "does not listen yet")
                    + f" {data.settle:g}s after its start",
                    f"see its log: {log}",
                )
            time.sleep(0.01)


#: what a proxy puts in its own environment or command line to talk to its next self (HAProxy's
#: master re-executes itself in wait mode with these, nginx hands sockets over in NGINX=)
_SELF_ENV = ("HAPROXY_", "NGINX")
_SELF_ARGS = {"-sf": True, "-st": True, "-x": False}  # flag -> takes a list of pids


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs if not key.startswith(_SELF_ENV)}


def _fresh_argv(argv: list[str]) -> list[str]:
    """``argv`` without the arguments a proxy's reload added (HAProxy: -sf PIDS, -x SOCKET)."""
    out: list[str] = []
    skipping = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _SELF_ARGS:
            skipping = _SELF_ARGS[arg]
            i += 1 if skipping else 2
            continue
        if skipping and arg.isdigit():
            i += 1
            continue
        skipping = False
        out.append(arg)
        i += 1
    return out


def _lab_of(namespace: str | None) -> LabState | None:
    """The state of the lab whose namespace ``namespace`` is (``chaos-<lab>-<role>``)."""
    from chaos.lab.topology import NS_PREFIX, LabState

    if namespace is None or not namespace.startswith(NS_PREFIX):
        return None
    return LabState.load(namespace[len(NS_PREFIX) :].rpartition("-")[0])


def _lab_proxy_in(namespace: str) -> int | None:
    """The live proxy process the lab records in ``namespace``."""
    state = _lab_of(namespace)
    for record in state.processes if state is not None else []:
        if record.role == "proxy" and record.namespace == namespace and record.alive():
            return record.pid
    return None


def _follow_in_lab_state(
    namespace: str | None, old_pid: int, old_started: int | None, new_pid: int
) -> None:
    """The lab that recorded the old process records the new one: `lab down`, later faults
    and the collectors find the proxy that runs now."""
    state = _lab_of(namespace)
    for i, record in enumerate(state.processes if state is not None else []):
        if record.pid == old_pid and record.started == old_started:
            fields: dict[str, Any] = record.to_json()
            fields.update(pid=new_pid, started=start_time(new_pid))
            state.processes[i] = ProcessRecord(**fields)  # type: ignore[union-attr]
            state.save()  # type: ignore[union-attr]
            return
