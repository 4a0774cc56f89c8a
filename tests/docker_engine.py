"""A Docker engine of the test's own, and the images it needs, for tests/engine.

Nothing can be pulled on the project's machines, and the host must be left exactly as found,
so the engine is isolated and every image is built locally:

- :class:`Engine` runs Debian's ``dockerd`` with its own data-root, exec-root, pidfile and
  socket, and with ``--iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
  --bridge=none``: with the default flags dockerd adds nft tables, sets ip_forward and makes
  docker0, and all of that outlives it. It runs in a mount namespace of its own (private
  propagation), so the overlay and nsfs mounts of its containers never appear on the host
  and vanish with it. :meth:`Engine.stop` always leaves nothing: containers removed, the
  daemon and its containerd and shims gone, its directories and the files dockerd writes
  outside them (``/etc/docker/key.json``, ``/run/docker``) removed when it created them.
- :func:`base_rootfs` debootstraps a minimal Debian bookworm (the mirror apt already uses)
  once per machine into ``CACHE`` (outside the checkout: CI clones afresh on the same
  machine); :func:`load_stand_ins` turns it into ``local/debian:bookworm`` and builds the
  test-only stand-ins on it (``python:3.11-slim-bookworm``, InfluxDB 2 → victoria-metrics),
  saved to the cache as one ``docker save`` archive so later runs load it in seconds.
- :func:`host_wheels` builds the project's dependencies as wheels with the host's pip (its
  TLS trust and indexes), cached; the image installs them from its build context with
  ``PIP_NO_INDEX=1`` and needs no network for Python packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

from session_token import TOKEN

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "tests" / "engine"
CACHE = Path(os.environ.get("CHAOS_TEST_CACHE", "/var/cache/chaos-tests"))
#: bump when the rootfs recipe changes (the cache key includes it)
ROOTFS_RECIPE = "debootstrap --variant=minbase bookworm; apt sources copied; apt caches cleared"
BASE_IMAGE = "local/debian:bookworm"
#: stand-in tag → its Dockerfile under tests/engine (built on BASE_IMAGE)
STAND_INS = {
    "python:3.11-slim-bookworm": "python-stand-in.Dockerfile",
    "chaos-test/influxdb-stand-in:local": "influxdb-stand-in.Dockerfile",
}
PROGRAMS = ("dockerd", "containerd", "runc", "docker", "docker-compose", "debootstrap", "unshare")
#: what dockerd and containerd's shims write outside the engine's own directories, whatever
#: the flags (the shims' sockets are always under /run/containerd/s)
DAEMON_DROPPINGS = (Path("/etc/docker/key.json"), Path("/run/docker"), Path("/run/containerd"))


class EngineError(RuntimeError):
    """The engine could not be started or an image could not be made (with the reason)."""


def why_unavailable() -> str | None:
    """The reason no engine can start on this host, or None."""
    if os.geteuid() != 0:
        return "needs root (dockerd)"
    missing = [p for p in PROGRAMS if not shutil.which(p, path=f"{os.environ['PATH']}:/usr/sbin")]
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/setup installs them)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (modprobe overlay)"
    return None


def run(argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        command = " ".join(argv[:4])
        raise EngineError(f"{command} ... exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


# --- the daemon ------------------------------------------------------------------------------


class Engine:
    """An isolated dockerd; ``with Engine() as engine:`` always stops and cleans it."""

    def __init__(self) -> None:
        tag = f"chaos-engine-{TOKEN}"  # the session guard (conftest.py) counts what has it
        # exec-root holds containerd's socket (a short path: sun_path has 108 bytes)
        self.exec_root = Path("/run") / tag
        self.data_root = Path("/var/tmp") / tag
        self.socket = self.exec_root / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.proc: subprocess.Popen | None = None
        self.log = self.data_root.with_suffix(".log")
        self._droppings = {p: p.exists() for p in DAEMON_DROPPINGS}

    def __enter__(self) -> Engine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        for path in (self.exec_root, self.data_root):
            path.mkdir(mode=0o711, parents=True)
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            "dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.exec_root / "docker.pid"), "-H", f"unix://{self.socket}",
            "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--bridge=none", "--log-level=warn",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            # unshare execs dockerd: the pid is the daemon's
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.docker("info", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise EngineError(f"dockerd did not answer in {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    def docker(self, *args: str, check: bool = True, timeout: float = 600,
               **kw) -> subprocess.CompletedProcess:  # fmt: skip
        argv = ["docker", *args]
        if check:
            return run(argv, timeout=timeout, env=self.env, **kw)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env, **kw)  # fmt: skip

    def stop(self) -> None:
        """Remove every container, stop the daemon (SIGTERM, then SIGKILL), end what it
        started, unmount anything of its still visible, and remove its directories."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", "-v", *ids, check=False, timeout=60)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._end_strays()
        self._unmount()
        for path in (self.data_root, self.exec_root):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.log.unlink()
        for path, existed in self._droppings.items():
            if not existed:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _end_strays(self) -> None:
        """containerd and its shims name the exec-root on their command lines."""
        marker = str(self.exec_root).encode()
        for _ in range(50):
            strays = []
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                            strays.append(int(entry))
            if not strays:
                return
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _unmount(self) -> None:
        """Mounts under the engine's directories seen from here (none, when the private
        mount namespace did its job): lazily unmounted, deepest first."""
        roots = (str(self.exec_root) + "/", str(self.data_root) + "/")
        points = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(roots) or line.split()[4] in (
                str(self.exec_root), str(self.data_root))
        ]  # fmt: skip
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


# --- the cache: base rootfs, stand-in images, wheels -----------------------------------------


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One writer at a time (two test sessions may build the same entry)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _prune(keep: Path) -> None:
    """Entries of the same kind with another key are stale: the cache keeps one of each."""
    prefix = keep.name.rsplit("-", 1)[0] + "-"
    for old in CACHE.glob(prefix + "*"):
        if old != keep and not old.name.endswith(".tmp"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def apt_sources() -> tuple[Path, str]:
    """The deb822 sources file apt uses here, and its first Debian mirror URI."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"),):
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("URIs:"):
                    return path, line.split()[1]
    raise EngineError("no Debian mirror found in /etc/apt/sources.list.d/debian.sources")


def base_rootfs() -> Path:
    """A tar of a minimal Debian bookworm with this host's apt sources, made once."""
    sources, mirror = apt_sources()
    path = CACHE / f"debian-bookworm-rootfs-{_key(ROOTFS_RECIPE, sources.read_bytes())}.tar"
    with _cache_lock():
        if path.exists():
            return path
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
        try:
            root = work / "rootfs"
            run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror], timeout=900)
            (root / "etc/apt/sources.list").unlink(missing_ok=True)
            shutil.copy(sources, root / "etc/apt/sources.list.d" / sources.name)
            for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (root / cache_dir).glob("*"):
                    if item.is_file():
                        item.unlink()
            tmp = path.with_suffix(".tmp")
            run(["tar", "-C", str(root), "-cf", str(tmp), "."])
            tmp.rename(path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune(path)
    return path


def load_stand_ins(engine: Engine) -> None:
    """BASE_IMAGE and every stand-in of STAND_INS in ``engine``: loaded from the cache, or
    built (apt through the host's network) and saved there."""
    rootfs = base_rootfs()
    recipes = [(HERE / name).read_bytes() for name in sorted(STAND_INS.values())]
    extra = [p.read_bytes() for p in sorted(HERE.glob("stand-in-files/*"))]
    path = CACHE / f"stand-in-images-{_key(rootfs.name, *recipes, *extra)}.tar"
    with _cache_lock():
        if path.exists():
            engine.docker("load", "-q", "-i", str(path))
            return
        engine.docker("import", "-c", 'CMD ["/bin/bash"]', str(rootfs), BASE_IMAGE)
        for tag, dockerfile in STAND_INS.items():
            engine.docker("build", "-q", "--network", "host", "-f", str(HERE / dockerfile),
                          "-t", tag, str(HERE))  # fmt: skip
        tmp = path.with_suffix(".tmp")
        engine.docker("save", "-o", str(tmp), BASE_IMAGE, *STAND_INS)
        tmp.rename(path)
        _prune(path)


def host_wheels() -> Path:
    """Wheels of every dependency (and the build backend), built by the host's pip."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    path = CACHE / f"wheels-{_key(pyproject, sys.version)}"
    with _cache_lock():
        if path.exists():
            return path
        tmp = path.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        project = tomllib.loads(pyproject.decode())
        wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp)]
        run([*pip, *wanted, "wheel"], timeout=900)
        tmp.rename(path)
        _prune(path)
    return path
