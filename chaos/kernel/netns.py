"""The only module that touches network-namespace handling.

Namespaces are always opened with ``flags=0``: pyroute2's default (``O_CREAT``) silently
creates a namespace when a name is mistyped. Every ``NetlinkError``/``OSError`` from this
layer is turned into a :class:`~chaos.errors.LabError` that names the namespace.

Entering a namespace is done per *thread* (``setns(CLONE_NEWNET)`` only moves the calling
thread), so the controller itself never leaves the host namespace: :func:`run_in` runs a
function in a short-lived thread that has entered the namespace. Reading ``/proc/sys/net`` or
``/proc/thread-self/net`` from such a thread sees that namespace's values.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from chaos.errors import CapabilityError, LabError, NotRootError, SysctlError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def path_of(name: str) -> str:
    """``/run/netns/NAME``, or NAME itself when it is a path (``/proc/PID/ns/net``, e.g. a
    remote agent's ``--allow proxy=/proc/self/ns/net``)."""
    return name if name.startswith("/") else os.path.join(NETNS_DIR, name)


def is_current(name: str) -> bool:
    """Whether ``name`` is the calling thread's own namespace. Entering it would change
    nothing, but setns() needs CAP_SYS_ADMIN, which an agent in a container lacks."""
    try:
        there, here = os.stat(path_of(name)), os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def visible_namespaces() -> list[tuple[str, str]]:
    """Every network namespace this process can see, once each, as (label, path): its own
    (``host``), the named ones under /run/netns, then those of running processes
    (``pid:N``). A namespace held only by a socket or a file descriptor is not seen."""
    places = [("host", "/proc/thread-self/ns/net")]
    places += [(name, path_of(name)) for name in list_namespaces()]
    places += [(f"pid:{e}", f"/proc/{e}/ns/net") for e in os.listdir("/proc") if e.isdigit()]
    seen: set[tuple[int, int]] = set()
    found = []
    for label, path in places:
        try:
            st = os.stat(path)
        except OSError:  # a process that just exited, or one we may not look into
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append((label, path))
    return found


def local_addresses() -> set[str]:
    """Every address configured in the calling thread's namespace (call through run_in)."""
    with IPRoute() as handle:
        return {
            a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS") for a in handle.get_addr()
        }


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))


def create(name: str) -> None:
    """Create a named namespace, as ``ip netns add`` does, without forking.

    A short-lived thread unshares its own network namespace and bind-mounts
    ``/proc/thread-self/ns/net`` at ``/run/netns/NAME``. (pyroute2's ``netns.create`` forks a
    child, which inherits the caller's signal handlers.)
    """
    if exists(name):
        raise LabError(f"network namespace {name!r} already exists")
    path = path_of(name)

    def in_thread() -> None:
        _share_netns_dir()
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                "bind mount",
            )
        except OSError:
            os.unlink(path)
            raise

    try:
        _run_in_thread(in_thread)
    except OSError as exc:
        raise LabError(f"cannot create network namespace {name!r}: {exc}") from exc


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so mounts propagate."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(
        _libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None),
        "bind mount /run/netns",
    )
    _check(
        _libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None), "share /run/netns"
    )


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _run_in_thread(fn: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def remove(name: str) -> None:
    """Remove a namespace; harmless when it is already gone."""
    if not exists(name):
        return
    try:
        _pr_netns.remove(name)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise LabError(f"cannot remove network namespace {name!r}: {exc}") from exc


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in(name: str) -> list[int]:
    """Pids of all processes whose network namespace is ``name``."""
    inode = _ns_inode(path_of(name))
    if inode is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_inode(f"/proc/{entry}/ns/net") == inode:
            pids.append(int(entry))
    return pids


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise NotRootError(
                "entering another network namespace needs CAP_SYS_ADMIN",
                "run it as root (sudo)",
            )
        raise OSError(err, os.strerror(err))


def _open_ns(name: str) -> int:
    try:
        return os.open(path_of(name), os.O_RDONLY)
    except FileNotFoundError:
        raise LabError(
            f"network namespace {name!r} does not exist",
            "bring the lab up first (`chaos lab up`), or check the name with `chaos lab status`",
        ) from None


def run_in(name: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a thread that has entered namespace ``name`` (``None``: the host's)."""
    if name is None or is_current(name):
        return fn(*args, **kwargs)
    fd = _open_ns(name)
    try:
        return run_in_fd(fd, fn, *args, **kwargs)
    finally:
        os.close(fd)


def run_in_fd(fd: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a short-lived thread that entered the namespace open at ``fd``."""

    def inside() -> T:
        _setns(fd)
        return fn(*args, **kwargs)

    return _run_in_thread(inside)


def popen(
    name: str | None,
    argv: Sequence[str],
    prepare: Callable[[], None] | None = None,
    **kwargs: Any,
) -> subprocess.Popen:
    """Start a process inside namespace ``name``; ``prepare`` runs in the child before exec."""
    fd = _open_ns(name) if name is not None and not is_current(name) else -1

    def in_child() -> None:
        if fd >= 0:
            _setns(fd)
        if prepare is not None:
            prepare()

    try:
        return subprocess.Popen(argv, preexec_fn=in_child, **kwargs)
    finally:
        if fd >= 0:
            os.close(fd)


def run(
    name: str | None, argv: Sequence[str], input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``name`` and wait for it; output captured as text."""
    proc = popen(
        name,
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def nft_binary() -> str:
    found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if found is None:
        raise CapabilityError("nft is not installed", "apt-get install nftables")
    return found


def nft(name: str | None, script: str, check_only: bool = False) -> subprocess.CompletedProcess:
    """Load (or with ``check_only`` only check, ``nft -c``) an nft script inside ``name``."""
    argv = [nft_binary(), *(["-c"] if check_only else []), "-f", "-"]
    return run(name, argv, input=script)


@contextlib.contextmanager
def ipr(name: str | None) -> Iterator[IPRoute]:
    """An rtnetlink handle inside ``name``; netlink errors become LabError."""
    try:
        handle = IPRoute(netns=name, flags=0) if name and not is_current(name) else IPRoute()
    except FileNotFoundError:
        _open_ns(name or "")  # raises the LabError with its hint
        raise
    try:
        yield handle
    except NetlinkError as exc:
        raise LabError(f"netlink error in namespace {name or 'host'}: {exc}") from exc
    finally:
        handle.close()


def delete_link(name: str | None, ifname: str) -> bool:
    """Delete an interface; False when it is already gone (a veth dies with its peer's
    namespace, asynchronously, so it can vanish between lookup and delete)."""
    with ipr(name) as handle:
        index = handle.link_lookup(ifname=ifname)
        if not index:
            return False
        try:
            handle.link("del", index=index[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True


# --- sysctls ---------------------------------------------------------------------------


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key


def check_sysctl_key(key: str) -> None:
    """Only ``net.*`` sysctls are per namespace; anything else would change the whole host."""
    if not key.startswith("net."):
        raise SysctlError(
            f"sysctl {key!r} is not per network namespace; setting it would change the host",
            "only net.* sysctls can be set per namespace in a scenario",
        )


#: per-namespace sysctls that older kernels lack: a missing one is a capability, not a typo
SYSCTL_SINCE = {"net.ipv4.tcp_rto_max_ms": "6.15"}


def _read(key: str) -> str:
    path = sysctl_path(key)
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        if key in SYSCTL_SINCE:
            raise CapabilityError(
                f"sysctl {key!r} needs Linux {SYSCTL_SINCE[key]} or later; this kernel "
                f"({os.uname().release}) does not have it",
                "run this scenario or variant on a newer kernel, or leave the sysctl out",
            ) from None
        raise SysctlError(
            f"unknown sysctl {key!r}: the kernel does not expose {path} in this namespace",
            "check the spelling (`sysctl -a | grep NAME`); some need a module (e.g. nf_conntrack)",
        ) from None


def _write(key: str, value: str) -> None:
    path = sysctl_path(key)
    _read(key)  # unknown keys get the clear error
    if not os.stat(path).st_mode & 0o200:
        raise SysctlError(f"sysctl {key!r} is read-only", "remove it from the scenario")
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except OSError as exc:
        raise SysctlError(
            f"the kernel rejected {key}={value!r}: {exc.strerror}",
            "check the value's format and range (see the kernel's ip-sysctl documentation)",
        ) from None


def sysctl_get(name: str | None, key: str) -> str:
    return run_in(name, _read, key)


def sysctl_set(name: str | None, key: str, value: str | int) -> str:
    """Set a sysctl in namespace ``name`` and return its previous value."""
    text = normalize_sysctl_value(value)

    def swap() -> str:
        old = _read(key)
        _write(key, text)
        return old

    return run_in(name, swap)


def normalize_sysctl_value(value: str | int | Sequence[int]) -> str:
    if isinstance(value, list | tuple):
        return "\t".join(str(v) for v in value)
    return str(value)
