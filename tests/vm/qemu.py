"""Run a command inside a QEMU VM that boots Debian's stock kernel (it has sch_netem).

The host kernel here has no netem, so netem tests run in a guest (see
``shared/notes/netem-kernel.md``). The guest is cheap to start because it brings almost
nothing of its own:

- kernel: the uncompressed ELF ``vmlinux`` extracted from ``/boot/vmlinuz-VER`` (QEMU boots it
  through PVH, which skips the real-mode decompressor: about 6 s less per boot under TCG);
- initramfs: static busybox, an ``/init`` script and the few modules that must be loaded
  before the root exists (virtio, 9p, overlay) plus the tc/netem ones the tests need;
- root: the host's ``/`` shared read-only over virtio-9p with a tmpfs overlay on top, so the
  guest runs the host's venv unchanged; the repository is a second, read-write share;
- results: a third share (a host temporary directory) that receives the command's stdout,
  stderr and exit code as files; the guest then powers off through sysrq.

Both artefacts are built once per kernel version and cached (``/var/cache/chaos-vm/VER``).
Nothing here imports chaos: this is test infrastructure, usable on its own::

    .venv/bin/python tests/vm/qemu.py -- uname -a
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("CHAOS_VM_CACHE", "/var/cache/chaos-vm"))
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
#: Loaded in /init in this order (with their dependencies). The first four are needed to mount
#: the root; the rest are what the netem tests use (loading them up front is deterministic and
#: avoids a request_module round trip through the host's modprobe under emulation).
MODULES = (
    "virtio_pci", "9pnet_virtio", "9p", "overlay",
    "sch_netem", "veth", "nf_tables", "ifb",
    "cls_u32", "sch_prio", "act_mirred", "sch_ingress", "act_gact",
)  # fmt: skip
#: ifb creates ifb0 and ifb1 on load unless told otherwise; the tests make their own.
MODULE_OPTIONS = {"ifb": "numifbs=0"}
KERNEL_ARGS = (
    "console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable no_timer_check "
    "cryptomgr.notests rdinit=/init"
)
GUEST_OUT = "/mnt/chaos-vm"  # where the results share is mounted in the guest

INIT = r"""#!/bin/busybox sh
# PID 1 of the initramfs: load modules, build the overlay root, switch_root into the runner.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /ro /rw /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r ko args; do insmod "/modules/$ko" $args 2>/dev/null; done < /modules/order
opts=trans=virtio,version=9p2000.L,msize=512000
# The host root is read-only and not changing under us: let the guest cache it.
mount -t 9p -o $opts,ro,cache=loose hostroot /ro || { echo "chaos-vm: no host root"; poweroff -f; }
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work overlay /newroot
# Fresh /tmp and /run first: a checkout under /tmp (a CI clone) is mounted on top of them.
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/run/netns
mkdir -p "/newroot@REPO@" /newroot@OUT@
mount -t 9p -o $opts repo "/newroot@REPO@"
mount -t 9p -o $opts out /newroot@OUT@
for fs in proc sys dev; do mount --move /$fs /newroot/$fs; done
exec switch_root /newroot /bin/sh @OUT@/run.sh
"""

RUNNER = """#!/bin/sh
# Runs as PID 1 in the overlay root; results go to the shared directory, then power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 CHAOS_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 {env}
ip link set lo up 2>/dev/null
cd {cwd}
( {command} ) >{out}/stdout 2>{out}/stderr
echo $? >{out}/rc.tmp && mv {out}/rc.tmp {out}/rc
sync
echo o >/proc/sysrq-trigger
sleep 60
"""


class VMUnavailable(RuntimeError):
    """QEMU, the kernel or busybox is missing: the VM cannot run on this host."""


@dataclass(frozen=True)
class Result:
    rc: int | None  # None: the guest never reported (crash, timeout)
    stdout: str
    stderr: str
    console: str  # the guest's serial console (kernel messages, init errors)
    seconds: float
    out_dir: Path  # the shared results directory (other files the command wrote)

    def describe(self) -> str:
        tail = "\n".join(self.console.splitlines()[-30:])
        return (
            f"guest exit code: {self.rc} after {self.seconds:.1f} s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}\n"
            f"--- console (last lines) ---\n{tail}"
        )


def kernel_version() -> str:
    """The newest kernel with both an image in /boot and modules (the stock Debian one)."""
    versions = [
        p.name[len("vmlinuz-") :]
        for p in Path("/boot").glob("vmlinuz-*")
        if (Path("/lib/modules") / p.name[len("vmlinuz-") :] / "modules.dep").exists()
    ]
    if not versions:
        raise VMUnavailable(
            "no /boot/vmlinuz-VER with /lib/modules/VER: install linux-image-amd64 "
            "(scripts/setup does)"
        )
    return sorted(versions, key=_version_key)[-1]


def _version_key(version: str) -> list[int]:
    return [int(part) for part in version.replace("-", ".").split(".") if part.isdigit()]


def check_available() -> str:
    """Return the kernel version to boot, or raise VMUnavailable naming what is missing."""
    missing = [name for name in (QEMU,) if shutil.which(name) is None]
    if not BUSYBOX.exists():
        missing.append(str(BUSYBOX))
    if missing:
        raise VMUnavailable(
            f"missing {', '.join(missing)}: install qemu-system-x86 busybox-static "
            "(scripts/setup does)"
        )
    return kernel_version()


def extract_vmlinux(vmlinuz: Path, dest: Path) -> None:
    """Write the xz payload of a bzImage, decompressed (the ELF vmlinux), to ``dest``."""
    data = vmlinuz.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise VMUnavailable(f"{vmlinuz}: no xz payload (is it an xz-compressed bzImage?)")
    # The payload is followed by padding; the decompressor stops at the end of the stream.
    elf = lzma.LZMADecompressor().decompress(data[start:])
    if not elf.startswith(b"\x7fELF"):
        raise VMUnavailable(f"{vmlinuz}: the xz payload is not an ELF image")
    _write_atomic(dest, elf)


def module_load_order(version: str) -> list[tuple[Path, str]]:
    """Module files in load order, with their options, deduplicated (modprobe's own resolution)."""
    seen: dict[Path, str] = {}
    for module in MODULES:
        out = subprocess.run(
            ["modprobe", "-S", version, "--show-depends", module],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] != ["insmod"]:
                continue  # "builtin NAME": nothing to load
            path, args = Path(parts[1]), " ".join(parts[2:])
            name = path.name.removesuffix(".ko")
            if name in MODULE_OPTIONS and MODULE_OPTIONS[name] not in args:
                args = f"{args} {MODULE_OPTIONS[name]}".strip()
            seen.setdefault(path, args)
    return list(seen.items())


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries; directories have empty data."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(version: str, dest: Path) -> None:
    modules = module_load_order(version)
    init = INIT.replace("@REPO@", str(REPO)).replace("@OUT@", GUEST_OUT)
    entries: list[tuple[str, int, bytes]] = [
        ("bin", 0o040755, b""),
        ("modules", 0o040755, b""),
        ("bin/busybox", 0o100755, BUSYBOX.read_bytes()),
        ("init", 0o100755, init.encode()),
        ("modules/order", 0o100644, "".join(f"{p.name} {a}\n" for p, a in modules).encode()),
    ]
    entries += [(f"modules/{path.name}", 0o100644, path.read_bytes()) for path, _ in modules]
    # Light gzip: the guest decompresses it at emulated speed, so a smaller ratio is faster.
    _write_atomic(dest, gzip.compress(_cpio_newc(entries), compresslevel=1))


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(dest)  # concurrent sessions may build at once; each rename is whole


def _cache_dir(version: str) -> Path:
    for root in (CACHE_ROOT, Path.home() / ".cache" / "chaos-vm"):
        try:
            (root / version).mkdir(parents=True, exist_ok=True)
            if os.access(root / version, os.W_OK):
                return root / version
        except OSError:
            continue
    raise VMUnavailable(f"no writable cache directory for the VM images ({CACHE_ROOT})")


def artefacts(version: str) -> tuple[Path, Path]:
    """(vmlinux, initramfs) for ``version``, built on first use and cached.

    The cache key is the kernel version plus the inputs' mtimes, so a reinstalled kernel or an
    edited module list rebuilds them.
    """
    cache = _cache_dir(version)
    vmlinuz = Path("/boot") / f"vmlinuz-{version}"
    kernel_stamp = str(vmlinuz.stat().st_mtime_ns)
    vmlinux, stamp_file = cache / "vmlinux", cache / "vmlinux.stamp"
    if not vmlinux.exists() or not stamp_file.exists() or stamp_file.read_text() != kernel_stamp:
        extract_vmlinux(vmlinuz, vmlinux)
        stamp_file.write_text(kernel_stamp)
    key = _digest(kernel_stamp, BUSYBOX.stat().st_mtime_ns, INIT, MODULES, MODULE_OPTIONS, REPO)
    initrd = cache / f"initramfs-{key}.cpio.gz"
    if not initrd.exists():
        for old in cache.glob("initramfs-*.cpio.gz"):
            old.unlink(missing_ok=True)
        build_initramfs(version, initrd)
    return vmlinux, initrd


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _qemu_argv(vmlinux: Path, initrd: Path, out: Path, memory_mb: int) -> list[str]:
    def share(tag: str, path: Path | str, readonly: bool) -> list[str]:
        ro = ",readonly=on" if readonly else ""
        return [
            "-fsdev", f"local,id={tag},path={path},security_model=none,multidevs=remap{ro}",
            "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}",
        ]  # fmt: skip

    return [
        QEMU, "-accel", "tcg", "-M", "pc", "-smp", "1", "-m", str(memory_mb),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", KERNEL_ARGS,
        "-serial", f"file:{out / 'console.log'}",
        *share("hostroot", "/", True), *share("repo", REPO, False), *share("out", out, False),
    ]  # fmt: skip


@contextlib.contextmanager
def _out_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="chaos-vm-") as tmp:
        yield Path(tmp)


def run(
    command: str,
    *,
    timeout: float = 280,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    out_dir: Path | None = None,
    memory_mb: int = 1024,
    collect: Sequence[str] = (),
) -> tuple[Result, dict[str, bytes]]:
    """Boot a VM, run the shell ``command`` as root in ``cwd``, power off.

    Returns the result and the contents of the files named in ``collect`` that the command
    wrote into ``$CHAOS_VM_OUT`` (the shared results directory). QEMU is always stopped
    before this returns, even on timeout or KeyboardInterrupt.
    """
    version = check_available()
    vmlinux, initrd = artefacts(version)
    with _out_dir(out_dir) as out:
        exports = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in {**(env or {}), "CHAOS_VM_OUT": GUEST_OUT}.items()
        )
        (out / "run.sh").write_text(
            RUNNER.format(env=exports, cwd=shlex.quote(str(cwd)), command=command, out=GUEST_OUT)
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            _qemu_argv(vmlinux, initrd, out, memory_mb),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            qemu_output, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:  # timeout or interrupt: never leave QEMU behind
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - started

        def read(name: str) -> str:
            path = out / name
            return path.read_text(errors="replace") if path.exists() else ""

        rc_text = read("rc").strip()
        console = read("console.log") + qemu_output.decode(errors="replace")
        result = Result(
            rc=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
            stdout=read("stdout"),
            stderr=read("stderr"),
            console=console,
            seconds=seconds,
            out_dir=out,
        )
        files = {name: (out / name).read_bytes() for name in collect if (out / name).exists()}
        return result, files


def python() -> str:
    """The venv's interpreter itself (a pyenv shim costs ~10 s per start under emulation)."""
    return str(REPO / ".venv" / "bin" / "python")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=280)
    parser.add_argument("command", nargs="+", help="the command to run in the guest")
    args = parser.parse_args(argv)
    try:
        result, _ = run(shlex.join(args.command), timeout=args.timeout)
    except VMUnavailable as exc:
        print(f"chaos-vm: {exc}", file=sys.stderr)
        return 4
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(f"chaos-vm: exit {result.rc} in {result.seconds:.1f} s", file=sys.stderr)
    if result.rc is None:
        print(result.describe(), file=sys.stderr)
    return 1 if result.rc is None else result.rc


if __name__ == "__main__":
    sys.exit(main())
