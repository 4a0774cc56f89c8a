"""Which network namespace a collector looks at, and how it gets in there.

A :class:`NetnsRef` names one namespace: the host's (the controller's own), a lab namespace by
name (entered through :func:`chaos.kernel.netns.run_in`, the project's one gateway to named
namespaces), or any process's namespace by pid, by container (its main process, as the
container engine's CLI reports it) or by a namespace file path (``/proc/PID/ns/net``, a
bind mount). For pid and path the namespace file is opened once and
the descriptor kept, so a recycled pid cannot silently point the collector at another
namespace.

Collectors do not stay inside a namespace. They *open* what they need inside it once (a
netlink socket, ``/proc/thread-self/net/...`` files, ``/proc/sys/net/...`` files) and then use
those descriptors from any thread: a socket or a procfs file stays bound to the namespace it
was opened in. That keeps a sample free of thread creation and ``setns`` calls. The price:
those descriptors keep the namespace alive until :meth:`close` (the usual netns semantics).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

from chaos.errors import LabError, NotRootError
from chaos.kernel import netns

T = TypeVar("T")
run_in_fd = netns.run_in_fd


def _ns_path_for_pid(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


class NetnsRef:
    """One network namespace, and a way to run code inside it.

    Build with :meth:`host`, :meth:`named`, :meth:`of_pid` or :meth:`of_path`. ``label`` is
    the value of the ``netns`` tag on every sample taken there.
    """

    def __init__(
        self, label: str, *, name: str | None = None, fd: int | None = None, inode: int | None
    ) -> None:
        self.label = label
        self.name = name
        self._fd = fd
        self.inode = inode

    # --- constructors ----------------------------------------------------------------------

    @classmethod
    def host(cls) -> NetnsRef:
        return cls("host", inode=_inode("/proc/thread-self/ns/net"))

    @classmethod
    def named(cls, name: str) -> NetnsRef:
        if not netns.exists(name):
            raise LabError(
                f"network namespace {name!r} does not exist",
                "check the name with `ip netns list` or `chaos lab status`",
            )
        return cls(name, name=name, inode=_inode(netns.path_of(name)))

    @classmethod
    def of_pid(cls, pid: int) -> NetnsRef:
        path = _ns_path_for_pid(pid)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LabError(
                f"no process with pid {pid}", "check the pid with `ps` or `pgrep`"
            ) from None
        except PermissionError:
            raise NotRootError(
                f"cannot open the network namespace of pid {pid}",
                "run the collector as root (sudo)",
            ) from None
        return cls(f"pid:{pid}", fd=fd, inode=os.fstat(fd).st_ino)

    @classmethod
    def of_container(cls, name: str) -> NetnsRef:
        """The namespace of a running container (Docker, or Podman where Docker is absent)."""
        ref = cls.of_pid(container_pid(name))
        ref.label = f"container:{name}"
        return ref

    @classmethod
    def of_path(cls, path: str, label: str | None = None) -> NetnsRef:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LabError(
                f"cannot open network namespace file {path}: {exc.strerror}",
                "give a /proc/PID/ns/net path or a bind mount such as /run/netns/NAME",
            ) from None
        return cls(label or path, fd=fd, inode=os.fstat(fd).st_ino)

    @classmethod
    def resolve(
        cls, netns_name: str | None = None, pid: int | None = None, container: str | None = None
    ) -> NetnsRef:
        """The CLI's choice: a namespace name, a pid, a container, or (none) the host."""
        if sum(x is not None for x in (netns_name, pid, container)) > 1:
            raise LabError("give one of a namespace name, a pid or a container, not several")
        if container is not None:
            return cls.of_container(container)
        if pid is not None:
            return cls.of_pid(pid)
        if netns_name is not None:
            return cls.named(netns_name)
        return cls.host()

    # --- use -------------------------------------------------------------------------------

    @property
    def is_host(self) -> bool:
        return self.name is None and self._fd is None

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` inside this namespace (in a helper thread unless it is the host's)."""
        if self._fd is not None:
            return run_in_fd(self._fd, fn, *args, **kwargs)
        if self.name is not None:
            return netns.run_in(self.name, fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"NetnsRef({self.label!r})"


CONTAINER_ENGINES = ("docker", "podman")


def container_pid(name: str) -> int:
    """The host pid of a running container's main process, from ``ENGINE inspect``."""
    engine = next((e for e in CONTAINER_ENGINES if shutil.which(e)), None)
    if engine is None:
        raise LabError(
            f"cannot look up container {name!r}: neither docker nor podman is installed",
            "give the pid of a process in the container instead (--pid PID)",
        )
    argv = [engine, "inspect", "--type", "container", "--format", "{{.State.Pid}}", name]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        raise LabError(
            f"`{engine} inspect {name}` did not answer within 15 s",
            f"check that the {engine} engine is running",
        ) from None
    err = result.stderr.strip()
    if result.returncode != 0:
        if "no such" in err.lower():
            raise LabError(
                f"{engine} has no container {name!r}", f"list them with `{engine} ps`"
            )
        raise LabError(
            f"`{engine} inspect {name}` failed: {err.splitlines()[-1] if err else 'no output'}",
            f"check that the {engine} engine is running and reachable "
            "(or give --pid PID of a process in the container)",
        )
    text = result.stdout.strip()
    if not text.isdigit() or int(text) == 0:
        raise LabError(
            f"container {name!r} is not running ({engine} reports pid {text or 'none'})",
            f"start it (`{engine} start {name}`) and try again",
        )
    return int(text)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class ProcFile:
    """A procfs/sysfs file opened once inside a namespace and re-read with ``pread``.

    ``/proc/thread-self/net/*`` and ``/proc/sys/net/*`` are resolved against the namespace of
    the thread that *opens* them; the open file keeps pointing there, so re-reading from the
    sampler thread sees the right namespace. ``pread(fd, n, 0)`` restarts a seq_file.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def open_here(cls, path: str) -> ProcFile | None:
        """Open ``path`` in the calling thread's namespace; ``None`` when it does not exist."""
        try:
            return cls(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            return None

    def read(self) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        chunks = []
        offset = 0
        while True:
            data = os.pread(self._fd, 262144, offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
        return b"".join(chunks)

    def read_text(self) -> str:
        return self.read().decode("ascii", "replace")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_proc_files(paths: dict[str, str]) -> dict[str, ProcFile]:
    """Open several files in the calling thread's namespace; missing files are left out.

    Meant to be run through :meth:`NetnsRef.run` so the files are bound to that namespace.
    """
    out: dict[str, ProcFile] = {}
    for key, path in paths.items():
        handle = ProcFile.open_here(path)
        if handle is not None:
            out[key] = handle
    return out


class ProcFiles:
    """Named procfs files opened once inside a namespace, re-read on every sample."""

    def __init__(self, ns: NetnsRef, paths: dict[str, str]) -> None:
        self._files: dict[str, ProcFile] = ns.run(open_proc_files, paths)

    def read(self, key: str) -> str:
        handle = self._files.get(key)
        return handle.read_text() if handle is not None else ""

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files = {}
